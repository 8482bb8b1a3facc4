"""/v1/sweeps and the one-call studies /v1/studies/depth and /v1/studies/batch-size: thin handlers
over api.services.sweeps (scheduling, pruning and findings are in the sweeps package)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel

from api.deps import IdempotencyKey, OwnedSweep, ProjectDep, SessionDep, creates
from api.services import leaderboard as board
from api.services import sweeps as svc
from models.settings import get_settings
from sweeps.spec import SweepSpec

router = APIRouter(prefix="/v1", tags=["sweeps"])


class ProgressOut(BaseModel):
    done: int  # finished in any way: succeeded, failed, cancelled or pruned
    queued: int
    running: int
    succeeded: int
    failed: int
    cancelled: int
    pruned: int
    total: int  # trials the sweep will run (max_trials, or the grid's size)


class BestOut(BaseModel):
    job_id: str | None
    number: int
    value: float | None
    params: dict[str, Any]


class TrialOut(BaseModel):
    job_id: str | None
    number: int
    params: dict[str, Any]
    objective: float | None
    verdict: str | None
    status: str  # queued | running | succeeded | failed | cancelled | pruned
    error: str | None = None


class SweepOut(BaseModel):
    id: str
    name: str
    kind: str  # sweep | study.depth | study.batch_size
    status: str  # running | succeeded | failed | cancelled
    algorithm: str
    objective: dict[str, Any]
    pruner: str
    max_trials: int
    max_concurrency: int
    progress: ProgressOut
    best: BestOut | None
    trials: list[TrialOut]
    next_trials_after: int | None  # pass as trials_after for the next page of the trials table
    findings: list[dict[str, Any]]
    conclusion: str | None  # studies: the comparison's conclusion once finished
    config: dict[str, Any]
    created_at: datetime
    finished_at: datetime | None


class SweepSummaryOut(BaseModel):
    id: str
    name: str
    kind: str
    status: str
    algorithm: str | None
    best_job_id: str | None
    progress: ProgressOut
    created_at: datetime
    finished_at: datetime | None


class SweepPage(BaseModel):
    items: list[SweepSummaryOut]
    next_cursor: str | None


def _json(view: dict[str, Any], status_code: int = 200) -> Response:
    """Validated against SweepOut, then serialized by pydantic in one pass: with 1,000 trials this
    is several times cheaper than FastAPI's re-serialization of the returned model."""
    body = SweepOut.model_validate(view).model_dump_json()
    return Response(body, status_code=status_code, media_type="application/json")


def _created(session: SessionDep, sweep_and_created: tuple[Any, bool]) -> Response:
    sweep, created = sweep_and_created
    return _json(svc.sweep_view(session, sweep=sweep), 201 if created else 200)


@router.post("/sweeps", **creates(SweepOut))
def create_sweep(
    body: SweepSpec,
    session: SessionDep,
    project: ProjectDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    return _created(
        session, svc.create_sweep(session, project=project, body=body, idempotency_key=idempotency_key)
    )


@router.get("/sweeps", response_model=SweepPage)
def list_sweeps(
    session: SessionDep,
    project: ProjectDep,
    status: str | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1)] = 50,
) -> SweepPage:
    items, next_cursor = svc.list_sweeps(
        session, project=project, status=status, cursor=cursor, limit=min(limit, get_settings().max_page_size)
    )
    return SweepPage(items=[SweepSummaryOut.model_validate(i) for i in items], next_cursor=next_cursor)


@router.get("/sweeps/{sweep_id}", response_model=SweepOut)
def get_sweep(
    sweep: OwnedSweep,
    session: SessionDep,
    # Trial numbers are 32-bit in the database (sweeps run at most 10,000 trials).
    trials_after: Annotated[
        int, Query(ge=-1, le=2**31 - 1, description="list trials numbered above this")
    ] = -1,
    trials_limit: Annotated[int, Query(ge=0, le=svc.MAX_TRIALS_PAGE)] = svc.DEFAULT_TRIALS_PAGE,
) -> Response:
    return _json(svc.read_sweep(session, sweep=sweep, trials_after=trials_after, trials_limit=trials_limit))


@router.get("/sweeps/{sweep_id}/leaderboard", response_model=board.LeaderboardOut)
def sweep_leaderboard(
    sweep: OwnedSweep,
    session: SessionDep,
    limit: Annotated[
        int, Query(ge=1, le=board.MAX_LIMIT, description="entries to return")
    ] = board.DEFAULT_LIMIT,
) -> Response:
    """The sweep's completed trials ranked by its objective, best first: params, objective value,
    key summary metrics, last validation and test values, verdict and status."""
    view = board.leaderboard(session, sweep=sweep, limit=limit)
    return Response(
        board.LeaderboardOut.model_validate(view).model_dump_json(), media_type="application/json"
    )


@router.post("/sweeps/{sweep_id}/cancel", response_model=SweepOut)
def cancel_sweep(sweep_id: str, session: SessionDep, project: ProjectDep) -> Response:
    return _json(svc.sweep_view(session, sweep=svc.cancel_sweep(session, project=project, sweep_id=sweep_id)))


@router.post("/studies/depth", **creates(SweepOut))
def depth_study(
    body: svc.DepthStudy,
    session: SessionDep,
    project: ProjectDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """A grid sweep over model.hidden; GET /v1/sweeps/{id} gives the comparison and conclusion."""
    return _created(
        session, svc.create_depth_study(session, project=project, body=body, idempotency_key=idempotency_key)
    )


@router.post("/studies/batch-size", **creates(SweepOut))
def batch_size_study(
    body: svc.BatchSizeStudy,
    session: SessionDep,
    project: ProjectDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """A grid sweep over batch_size: λ_max, test loss and time per epoch against batch size."""
    return _created(
        session,
        svc.create_batch_size_study(session, project=project, body=body, idempotency_key=idempotency_key),
    )
