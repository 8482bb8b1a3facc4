"""Job operations as plain functions: each query carries the caller's project in its WHERE clause."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.services.finetune import check_init_from
from api.services.idempotency import check_same_body, commit_or_winner
from models.arch_reports import available
from models.archs import arch_problem
from models.budget import budget_problems
from models.dataset_refs import resolve_uploads
from models.errors import Conflict, Invalid, NotFound, QuotaExceeded
from models.settings import get_settings
from models.spec import JobSpec
from models.spectrum import SpectrumRecord
from models.tables import FINISHED_STATUSES, Checkpoint, Diagnosis, Job, Project, Spectrum, utcnow
from worker.celery_app import enqueue_job, enqueue_spectrum

log = logging.getLogger("saddle.api")


def request_hash(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def check_datasets_exist(session: Session, *, project: Project, spec: JobSpec) -> tuple[int, int] | None:
    """Invalid for an upload (by id or name) that is not this project's, or for data.augment on
    data that are not images; returns (rows, features) of data.dataset when it is an upload."""
    return resolve_datasets(session, project=project, spec=spec)[1]


def resolve_datasets(
    session: Session, *, project: Project, spec: JobSpec
) -> tuple[JobSpec, tuple[int, int] | None]:
    """The spec with upload names replaced by their ids (models.dataset_refs), and (rows, features)
    of data.dataset when it is an upload."""
    spec, upload = resolve_uploads(session, project_id=project.id, spec=spec)
    return spec, (upload.n_rows, upload.n_features) if upload else None


def check_budget(spec: JobSpec, uploaded: tuple[int, int] | None) -> None:
    problems = budget_problems(spec, uploaded)
    if problems:
        raise Invalid("; ".join(problems))


def admit_spec(session: Session, *, project: Project, spec: JobSpec) -> JobSpec:
    """What a spec must satisfy before a job may exist, whichever route creates it (jobs, sweeps and
    studies, remedies, fine-tunes): its uploaded datasets and its init_from job are this project's,
    and it fits the budget (models.budget). ``Invalid`` naming the field otherwise. Returns the spec
    to store: uploads named by name are named by id."""
    spec, shape = resolve_datasets(session, project=project, spec=spec)
    check_architecture(session, spec=spec)
    check_budget(spec, shape)
    check_init_from(session, project=project, spec=spec)
    return spec


def check_architecture(session: Session, *, spec: JobSpec) -> None:
    """Invalid for a model.arch that no live worker offers (models.arch_reports), listing those
    that are, and for a resnet on a built-in table."""
    problem = arch_problem(spec, available(session))
    if problem:
        raise Invalid(problem)


def check_queue_room(session: Session, *, project: Project, adding: int = 1) -> None:
    """QuotaExceeded when the project already has SADDLE_MAX_QUEUED_JOBS jobs waiting."""
    limit = get_settings().max_queued_jobs
    queued = queued_jobs(session, project_id=project.id)
    if queued + adding > limit:
        raise QuotaExceeded(
            f"project quota: {queued:,} jobs queued; at most {limit:,} may wait at once "
            "(SADDLE_MAX_QUEUED_JOBS); retry when some have started",
            retry_after=30,
        )


def queued_jobs(session: Session, *, project_id: str) -> int:
    return session.scalar(
        select(func.count()).select_from(Job).where(Job.project_id == project_id, Job.status == "queued")
    )


def create_job(
    session: Session,
    *,
    project: Project,
    spec: JobSpec,
    idempotency_key: str | None = None,
    request: dict[str, Any] | None = None,
    **fields: Any,
) -> tuple[Job, bool]:
    """Insert the job row and enqueue it to the task of its kind. Returns (job, created); an
    idempotent replay is not created. ``request`` is what the key's body hash covers (default: the
    spec); ``fields`` are extra columns (parent_id, sweep_id, kind, summary...)."""
    # The key covers the request as sent (a dataset by name), not the resolved spec.
    digest = request_hash(request if request is not None else spec.model_dump(mode="json"))
    if idempotency_key:
        existing = find_by_idempotency_key(session, project=project, key=idempotency_key)
        if existing is not None:
            return _replay(existing, digest), False
    spec = admit_spec(session, project=project, spec=spec)
    payload = spec.model_dump(mode="json")
    check_queue_room(session, project=project)
    if spec.init_from is not None:
        fields.setdefault("parent_id", spec.init_from.job)  # the fine-tuned job records its parent
    job = Job(
        project_id=project.id,
        name=spec.name,
        spec=payload,
        tags=dict(spec.tags),
        status="queued",
        idempotency_key=idempotency_key,
        request_hash=digest,
        **fields,
    )
    session.add(job)
    winner = commit_or_winner(
        session,
        find_existing=lambda: find_by_idempotency_key(session, project=project, key=idempotency_key or ""),
    )
    if winner is not None:
        return _replay(winner, digest), False
    enqueue(job.id, job.kind)
    return job, True


def _replay(job: Job, digest: str) -> Job:
    check_same_body(job.request_hash, digest)
    return job


def find_by_idempotency_key(session: Session, *, project: Project, key: str) -> Job | None:
    return session.scalars(
        select(Job).where(Job.project_id == project.id, Job.idempotency_key == key)
    ).one_or_none()


def enqueue(job_id: str, kind: str = "train") -> None:
    """Postgres holds the job; if the broker is away the reaper re-enqueues it later."""
    try:
        enqueue_job(job_id, kind)
    except Exception:
        log.exception("could not enqueue job %s; it stays queued in the database", job_id)


def get_job(session: Session, *, project: Project, job_id: str, for_update: bool = False) -> Job:
    stmt = select(Job).where(Job.id == job_id, Job.project_id == project.id)
    job = session.scalars(stmt.with_for_update() if for_update else stmt).one_or_none()
    if job is None:
        raise NotFound(f"job {job_id} not found")
    return job


def cancel_job(session: Session, *, project: Project, job_id: str) -> Job:
    job = get_job(session, project=project, job_id=job_id, for_update=True)
    if job.status in FINISHED_STATUSES:
        raise Conflict(f"job {job_id} has already finished ({job.status})")
    job.cancel_requested = True
    if job.status == "queued":  # never started: it ends now, and a late delivery will skip it
        job.status, job.finished_at = "cancelled", utcnow()
    return job


def list_checkpoints(session: Session, *, job_id: str) -> list[Checkpoint]:
    """``job_id`` is the caller's (``api.deps.OwnedJobId``)."""
    return list(
        session.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step))
    )


def list_diagnoses(session: Session, *, job_id: str) -> list[Diagnosis]:
    """The verdict first, then the findings. ``job_id`` is the caller's (``api.deps.OwnedJobId``)."""
    return list(
        session.scalars(
            select(Diagnosis).where(Diagnosis.job_id == job_id).order_by(Diagnosis.kind.desc(), Diagnosis.id)
        )
    )


def list_spectra(session: Session, *, job_id: str) -> list[dict[str, Any]]:
    """``job_id`` is the caller's (``api.deps.OwnedJobId``)."""
    rows = session.scalars(
        select(Spectrum).where(Spectrum.job_id == job_id).order_by(Spectrum.step, Spectrum.id)
    )
    return [SpectrumRecord.of_row(r).model_dump() | {"created_at": r.created_at} for r in rows]


def request_spectrum(session: Session, *, job_id: str, checkpoint_id: int, settings: dict[str, Any]) -> None:
    """``job_id`` is the caller's (``api.deps.OwnedJobId``)."""
    found = session.scalar(
        select(Checkpoint.id).where(Checkpoint.id == checkpoint_id, Checkpoint.job_id == job_id)
    )
    if found is None:
        raise NotFound(f"checkpoint {checkpoint_id} of job {job_id} not found")
    enqueue_spectrum(job_id, checkpoint_id, settings)
