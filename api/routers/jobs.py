"""/v1/jobs: thin handlers over api.services.jobs."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Path, Query, Request, Response
from fastapi.responses import ORJSONResponse
from pydantic import BaseModel, ConfigDict, Field

from api.deps import IdempotencyKey, OwnedJob, OwnedJobId, ProjectDep, SessionDep, creates, require_owned_job
from api.schemas import (
    CheckpointOut,
    DiagnosisOut,
    JobDetailOut,
    JobOut,
    JobPage,
    MetricsOut,
    SpectrumOut,
)
from api.services import compare, query, remedies
from api.services import jobs as svc
from models.db import session_scope
from models.metrics import read_series
from models.settings import get_settings
from models.spec import JobSpec

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

# Integers reach SQL as 64-bit values: anything wider is a 422 here, not an overflow in the driver.
MAX_INT64 = 2**63 - 1
Step = Annotated[int | None, Query(ge=0, le=MAX_INT64)]


@router.post("", **creates(JobOut, exclude_unset=True))
def submit_job(
    spec: JobSpec,
    session: SessionDep,
    project: ProjectDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> JobOut:
    job, created = svc.create_job(session, project=project, spec=spec, idempotency_key=idempotency_key)
    if not created:
        response.status_code = 200
    return JobOut.model_validate(job)


@router.get("", response_model=JobPage)
def list_jobs(
    request: Request,
    session: SessionDep,
    project: ProjectDep,
    status: str | None = None,
    name: str | None = None,
    verdict: str | None = None,
    finding: Annotated[list[str] | None, Query(description="jobs with this finding code; repeatable")] = None,
    sweep: str | None = None,
    tag: Annotated[list[str] | None, Query(description="key:value or key; repeatable")] = None,
    created_after: str | None = None,
    created_before: str | None = None,
    sort: Annotated[str | None, Query(description="created_at or a dotted path, '-' for descending")] = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_INT64)] = 50,
) -> Response:
    """Filter by the named parameters and by any dotted spec./summary./progress. path with an optional
    operator suffix (__lt, __lte, __gt, __gte, __ne, __in), e.g. `spec.optimizer.lr__lt=0.01`."""
    limit = min(limit, get_settings().max_page_size)
    rows, next_cursor = query.list_jobs(
        session,
        project_id=project.id,
        params=list(request.query_params.multi_items()),
        cursor=cursor,
        limit=limit,
    )
    page = JobPage(items=[JobOut.model_validate(j) for j in rows], next_cursor=next_cursor)
    # Serialized by pydantic in one pass: FastAPI's second validation and json.dumps of 50 jobs
    # with their specs and summaries cost ~6x as much (see benchmarks/query.py).
    return Response(page.model_dump_json(exclude_unset=True), media_type="application/json")


@router.get("/compare")
def compare_jobs(
    session: SessionDep,
    project: ProjectDep,
    ids: Annotated[str, Query(description="comma-separated job ids (2 to 20)")],
    name: Annotated[
        list[str] | None, Query(description="series to align; default losses and accuracies")
    ] = None,
) -> dict[str, Any]:
    """Spec differences of several jobs and their per-epoch series aligned by epoch."""
    return compare.compare(session, project=project, job_ids=[i for i in ids.split(",") if i], names=name)


@router.get("/{job_id}", response_model=JobDetailOut, response_model_exclude_unset=True)
def get_job(job: OwnedJob, session: SessionDep) -> JobDetailOut:
    out = JobOut.model_validate(job)
    return JobDetailOut(**vars(out), remedy=remedies.remedy_offer(session, job=job))


@router.post("/{job_id}/cancel", response_model=JobOut, response_model_exclude_unset=True)
def cancel_job(job_id: str, session: SessionDep, project: ProjectDep) -> JobOut:
    return JobOut.model_validate(svc.cancel_job(session, project=project, job_id=job_id))


@router.get("/{job_id}/metrics", response_model=MetricsOut)
def get_metrics(
    job_id: str,
    authorization: Annotated[str | None, Header()] = None,
    name: Annotated[list[str] | None, Query(description="series names, e.g. val/loss; repeatable")] = None,
    split: Annotated[str | None, Query(description="only series of this split: train, val, test")] = None,
    step_min: Step = None,
    step_max: Step = None,
    max_points: Annotated[int, Query(ge=2, le=MAX_INT64)] = 2000,
) -> ORJSONResponse:
    max_points = min(max_points, get_settings().max_metric_points)
    # The hottest read: the session, the token and the ownership check are taken here, in the
    # handler's one trip through the thread pool, instead of as three dependencies (a trip each,
    # about a millisecond apiece on 2 cores), and the token and the ownership are one statement
    # (benchmarks/README.md, ingest.py).
    with session_scope() as session:
        require_owned_job(session, authorization, job_id)
        series = read_series(
            session, job_id, name, f"{split}/" if split else None, step_min, step_max, max_points, arrays=True
        )
    # Built from what read_series shaped (a series read whole as numpy arrays, which orjson writes
    # directly, NaN and ±inf as null): returning the response directly skips a second validation
    # pass over tens of thousands of floats (MetricsOut documents the shape).
    return ORJSONResponse({"job_id": job_id, "series": [vars(s) for s in series]})


@router.get("/{job_id}/checkpoints", response_model=list[CheckpointOut])
def list_checkpoints(job_id: OwnedJobId, session: SessionDep) -> list[CheckpointOut]:
    return [CheckpointOut.model_validate(c) for c in svc.list_checkpoints(session, job_id=job_id)]


@router.get("/{job_id}/spectra", response_model=list[SpectrumOut])
def list_spectra(job_id: OwnedJobId, session: SessionDep) -> list[SpectrumOut]:
    return [SpectrumOut.model_validate(s) for s in svc.list_spectra(session, job_id=job_id)]


@router.get("/{job_id}/diagnoses", response_model=list[DiagnosisOut])
def list_diagnoses(job_id: OwnedJobId, session: SessionDep) -> list[DiagnosisOut]:
    return [DiagnosisOut.model_validate(d) for d in svc.list_diagnoses(session, job_id=job_id)]


class RemedyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    findings: list[Annotated[str, Field(max_length=64)]] | None = Field(
        None, max_length=64, description="codes whose fixes to apply; default: the verdict's fix"
    )


class RemedyOut(BaseModel):
    job: JobOut
    applied: list[str]
    patch: dict[str, Any]


@router.post("/{job_id}/remedy", **creates(RemedyOut, exclude_unset=True))
def remedy(
    parent: OwnedJob,
    session: SessionDep,
    project: ProjectDep,
    response: Response,
    body: Annotated[RemedyRequest | None, Body()] = None,
    idempotency_key: IdempotencyKey = None,
) -> RemedyOut:
    """201 with the new remedy job; 200 with the same job when this remedy (the same parent and
    fixes, or the same Idempotency-Key) was already made."""
    findings = body.findings if body else None
    job, what, created = remedies.create_remedy(
        session, project=project, parent=parent, codes=findings, idempotency_key=idempotency_key
    )
    if not created:
        response.status_code = 200
    return RemedyOut(job=JobOut.model_validate(job), **what)


@router.get("/{job_id}/remedies")
def list_remedies(parent: OwnedJob, session: SessionDep) -> dict[str, Any]:
    return remedies.compare_with_remedies(session, parent=parent)


class SpectrumRequest(BaseModel):
    """Settings for an on-demand spectrum; unset fields keep the job's analysis.hessian values."""

    model_config = ConfigDict(extra="forbid")

    top_k: int | None = Field(None, ge=1, le=100)
    bottom_k: int | None = Field(None, ge=0, le=100)
    trace: bool | None = None
    density: bool | None = None
    samples: int | None = Field(None, ge=1, le=1_000_000)


@router.post("/{job_id}/checkpoints/{checkpoint_id}/spectrum", status_code=202)
def request_spectrum(
    job_id: OwnedJobId,
    checkpoint_id: Annotated[int, Path(ge=1, le=MAX_INT64)],
    session: SessionDep,
    body: Annotated[SpectrumRequest | None, Body()] = None,
) -> dict[str, Any]:
    settings = (body or SpectrumRequest()).model_dump(exclude_none=True)
    svc.request_spectrum(session, job_id=job_id, checkpoint_id=checkpoint_id, settings=settings)
    return {
        "status": "queued",
        "job_id": job_id,
        "checkpoint_id": checkpoint_id,
        "settings": settings,
        "result": f"/v1/jobs/{job_id}/spectra",
    }
