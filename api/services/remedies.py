"""Remedies: resubmit a job with the fixes its diagnosis proposed, and compare the two runs."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.services.jobs import create_job, get_job
from models.patch import merge_patch
from models.spec import JobSpec
from models.tables import FINISHED_STATUSES, Diagnosis, Job, Project


def chosen_patches(diagnoses: list[Diagnosis], codes: list[str] | None) -> list[Diagnosis]:
    """By default the verdict's fix (it names the root cause), plus fixes of error-level findings."""
    with_patch = [d for d in diagnoses if d.patch]
    if codes:
        unknown = sorted(set(codes) - {d.code for d in diagnoses})
        if unknown:
            raise HTTPException(422, f"findings: this job has no diagnosis {unknown}")
        return [d for d in with_patch if d.code in codes]
    verdict = [d for d in with_patch if d.kind == "verdict"]
    errors = [d for d in with_patch if d.kind == "finding" and d.severity == "error"]
    return verdict + [d for d in errors if d not in verdict]


def create_remedy(
    session: Session, project: Project, job_id: str, codes: list[str] | None
) -> tuple[Job, dict]:
    parent = get_job(session, project, job_id)
    if parent.status not in FINISHED_STATUSES:
        raise HTTPException(
            409, f"job {job_id} is still {parent.status}; remedies follow a finished diagnosis"
        )
    diagnoses = list(
        session.scalars(select(Diagnosis).where(Diagnosis.job_id == job_id, Diagnosis.provisional.is_(False)))
    )
    chosen = chosen_patches(diagnoses, codes)
    if not chosen:
        raise HTTPException(422, "nothing to remedy: no chosen diagnosis carries a fix")
    spec = dict(parent.spec)
    patch: dict[str, Any] = {}
    for d in chosen:
        patch = merge_patch(patch, d.patch)
    spec = merge_patch(spec, patch)
    spec["name"] = (parent.name or "job")[:190] + "-remedy"
    try:
        remedy_spec = JobSpec.model_validate(spec)
    except ValidationError as exc:
        raise HTTPException(422, f"the patched spec is invalid: {exc.errors()[0]['msg']}") from None
    job, _ = create_job(session, project, remedy_spec, parent_id=parent.id, kind="remedy")
    return job, {"applied": [d.code for d in chosen], "patch": patch}


def compare_with_remedies(session: Session, project: Project, job_id: str) -> dict[str, Any]:
    """The parent beside each remedy: verdict and headline metrics, so one can see if the fix helped."""
    parent = get_job(session, project, job_id)
    children = session.scalars(
        select(Job)
        .where(Job.parent_id == job_id, Job.project_id == project.id, Job.kind == "remedy")
        .order_by(Job.created_at)
    ).all()
    return {"job": headline(parent), "remedies": [headline(c) for c in children]}


def headline(job: Job) -> dict[str, Any]:
    p, s = job.progress or {}, job.summary or {}
    out = {
        "id": job.id,
        "status": job.status,
        "verdict": job.verdict,
        "best_val_loss": s.get("best_val_loss"),
    }
    for key in ("train_loss", "val_loss", "test_loss", "train_accuracy", "val_accuracy", "test_accuracy"):
        out[key] = p.get(key)
    return out
