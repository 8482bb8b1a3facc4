"""Remedies: resubmit a job with the fixes its diagnosis proposed, and compare the two runs."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.services.jobs import create_job, request_hash
from models.errors import Conflict, Invalid
from models.patch import merge_patch
from models.spec import JobSpec
from models.summary import RunSummary
from models.tables import FINISHED_STATUSES, Diagnosis, Job, Project


def chosen_patches(diagnoses: list[Diagnosis], codes: list[str] | None) -> list[Diagnosis]:
    """By default the verdict's fix (it names the root cause), plus fixes of error-level findings."""
    with_patch = [d for d in diagnoses if d.patch]
    if codes:
        unknown = sorted(set(codes) - {d.code for d in diagnoses})
        if unknown:
            raise Invalid(f"findings: this job has no diagnosis {unknown}")
        return [d for d in with_patch if d.code in codes]
    verdict = [d for d in with_patch if d.kind == "verdict"]
    errors = [d for d in with_patch if d.kind == "finding" and d.severity == "error"]
    return verdict + [d for d in errors if d not in verdict]


def create_remedy(
    session: Session,
    *,
    project: Project,
    parent: Job,
    codes: list[str] | None,
    idempotency_key: str | None = None,
) -> tuple[Job, dict, bool]:
    """The remedy job, what it applied, and whether it was created now. Idempotent: without an
    Idempotency-Key, the key is the parent and the fixes applied, so retries and concurrent clicks
    of the same remedy make one job (a second identical run would repeat the first exactly)."""
    if parent.status not in FINISHED_STATUSES:
        raise Conflict(f"job {parent.id} is still {parent.status}; remedies follow a finished diagnosis")
    chosen = chosen_patches(final_diagnoses(session, job_id=parent.id), codes)
    if not chosen:
        raise Invalid("nothing to remedy: no chosen diagnosis carries a fix")
    patch, remedy_spec = patched_spec(parent, chosen)
    applied = [d.code for d in chosen]
    request = {"remedy_of": parent.id, "applied": sorted(applied)}
    key = idempotency_key or f"remedy:{parent.id}:{request_hash(request)[:16]}"
    job, created = create_job(
        session,
        project=project,
        spec=remedy_spec,
        idempotency_key=key,
        request=request,
        parent_id=parent.id,
        kind="remedy",
    )
    return job, {"applied": applied, "patch": patch}, created


def final_diagnoses(session: Session, *, job_id: str) -> list[Diagnosis]:
    return list(
        session.scalars(select(Diagnosis).where(Diagnosis.job_id == job_id, Diagnosis.provisional.is_(False)))
    )


def patched_spec(parent: Job, chosen: list[Diagnosis]) -> tuple[dict[str, Any], JobSpec]:
    """The chosen fixes merged into one patch, and the parent's spec with it applied (Invalid if not valid)."""
    patch: dict[str, Any] = {}
    for d in chosen:
        patch = merge_patch(patch, d.patch)
    spec = merge_patch(dict(parent.spec), patch)
    spec["name"] = (parent.name or "job")[:190] + "-remedy"
    try:
        return patch, JobSpec.model_validate(spec)
    except ValidationError as exc:
        raise Invalid(f"the patched spec is invalid: {exc.errors()[0]['msg']}") from None


def remedy_offer(session: Session, *, job: Job) -> dict[str, Any]:
    """What ``POST /v1/jobs/{id}/remedy`` would accept now, so clients offer nothing it would refuse:
    ``available`` and ``applies`` for a request without a body (the codes whose fixes it would
    apply), ``findings`` for the codes it accepts one at a time (``{"findings": [code]}``)."""
    if job.status not in FINISHED_STATUSES:
        return {"available": False, "applies": [], "findings": []}
    diagnoses = final_diagnoses(session, job_id=job.id)
    applies = _accepted(job, diagnoses, None)
    findings = [d.code for d in diagnoses if d.patch and _accepted(job, diagnoses, [d.code])]
    return {"available": bool(applies), "applies": applies, "findings": findings}


def _accepted(job: Job, diagnoses: list[Diagnosis], codes: list[str] | None) -> list[str]:
    """The codes create_remedy would apply for ``codes``, or [] where it would refuse them."""
    try:
        chosen = chosen_patches(diagnoses, codes)
        if chosen:
            patched_spec(job, chosen)
    except Invalid:
        return []
    return [d.code for d in chosen]


def compare_with_remedies(session: Session, *, parent: Job) -> dict[str, Any]:
    """The parent beside each remedy: verdict and headline metrics, so one can see if the fix helped."""
    children = session.scalars(
        select(Job)
        .where(Job.parent_id == parent.id, Job.project_id == parent.project_id, Job.kind == "remedy")
        .order_by(Job.created_at)
    ).all()
    return {"job": headline(parent), "remedies": [headline(c) for c in children]}


def headline(job: Job) -> dict[str, Any]:
    p = job.progress or {}
    out = {
        "id": job.id,
        "status": job.status,
        "verdict": job.verdict,
        "best_val_loss": RunSummary.of(job.summary).best_val_loss,
    }
    for key in ("train_loss", "val_loss", "test_loss", "train_accuracy", "val_accuracy", "test_accuracy"):
        out[key] = p.get(key)
    return out
