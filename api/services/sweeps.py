"""Sweep and study operations as plain functions; every query carries the caller's project.

The scheduling itself (Optuna, launching trials, pruning, findings) lives in the ``sweeps`` package, which
is torch-free; this module validates requests, creates sweeps, and shapes what the API returns.
"""

from __future__ import annotations

import copy
from typing import Annotated, Any, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import and_, func, or_, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from api.services.finetune import check_init_from, check_parent_exists
from api.services.idempotency import check_same_body, commit_or_winner
from api.services.jobs import (
    check_budget,
    check_datasets_exist,
    check_queue_room,
    request_hash,
    resolve_datasets,
)
from api.services.query import decode_keyset, encode_keyset
from models.db import with_retries
from models.errors import Conflict, DomainError, Invalid, NotFound
from models.numeric import finite_or_none
from models.patch import set_path
from models.spec import MAX_TAGS, JobSpec
from models.tables import Job, Project, Sweep, SweepTrial, new_id
from sweeps import scheduler
from sweeps.spec import MAX_GRID_POINTS, SWEEP_STATUSES, Dim, SweepSpec, sweep_spec

DEFAULT_TRIALS_PAGE = 1_000
# Each candidate value of a space is validated as a whole spec (~0.1 ms): this bounds one request's
# validation to well under a second of CPU.
MAX_SPACE_VALUES = 4_000
MAX_TRIALS_PAGE = 10_000
# A deadlock aborts one side and the other goes on, so a second try rarely waits; a database that is
# away gets the API's 503 after these tries (~1 s), not the worker's minute of retries.
CANCEL_ATTEMPTS = 4


# ----- validation -------------------------------------------------------------------------------
def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as ``Init`` or ``InitFrom | None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _is_mapping(annotation: Any) -> bool:
    return get_origin(annotation) is dict or any(_is_mapping(a) for a in get_args(annotation))


def check_path(path: str) -> str | None:
    """None when the dotted path names a JobSpec field (or a key under a free-form mapping such as
    ``data.params.noise``), else what is wrong with it."""
    model: type[BaseModel] = JobSpec
    parts = path.split(".")
    for i, part in enumerate(parts):
        so_far = ".".join(parts[: i + 1])
        info = model.model_fields.get(part)
        if info is None:
            return f"{so_far} is not a JobSpec field"
        if i == len(parts) - 1:
            return None
        sub = _model_in(info.annotation)
        if sub is None:
            if _is_mapping(info.annotation) and i == len(parts) - 2:
                return None
            return f"{so_far} has no field {parts[i + 1]!r}"
        model = sub
    return None


def plan(session: Session, *, project: Project, body: SweepSpec) -> int:
    """Validate what pydantic cannot see alone and return how many trials the sweep will run.

    Every candidate value (each choice, both bounds of a range) is set on the base spec and the
    result validated as a JobSpec, so a value that can only give invalid trials is refused now, not a
    failed trial later."""
    for path in body.space:
        problem = check_path(path)
        if problem:
            raise Invalid(loc=("space", path), message=problem)
    values = sum(len(dim.candidates()) for dim in body.space.values())
    if values > MAX_SPACE_VALUES:
        raise Invalid(loc=("space",), message=f"{values} candidate values in all; at most {MAX_SPACE_VALUES}")
    if body.algorithm == "grid":
        size = 1
        for path, dim in body.space.items():
            points = dim.grid()
            if points is None:
                raise Invalid(
                    loc=("space", path),
                    message=f"grid needs choice or int dimensions; {dim.type} is continuous (use random or tpe)",
                )
            size *= len(points)
        if size > MAX_GRID_POINTS:
            raise Invalid(loc=("space",), message=f"the grid has {size} points; at most {MAX_GRID_POINTS}")
        if body.max_trials is not None and body.max_trials > size:
            raise Invalid(loc=("max_trials",), message=f"{body.max_trials} exceeds the grid's {size} points")
        total = body.max_trials or size
    elif body.max_trials is None:
        raise Invalid(loc=("max_trials",), message=f"required for algorithm {body.algorithm}")
    else:
        total = body.max_trials

    if len(body.base.tags) > MAX_TAGS - 2:  # each trial's job adds the tags sweep and trial
        raise Invalid(
            loc=("base", "tags"), message=f"at most {MAX_TAGS - 2} tags: trials add 'sweep' and 'trial'"
        )
    check = _SpecCheck(session, project)
    try:  # the base's own datasets and parent first, so their errors name the base
        check_datasets_exist(session, project=project, spec=body.base)
        if body.base.init_from is not None:
            check_parent_exists(session, project=project, job_id=body.base.init_from.job)
    except DomainError as exc:
        inner = exc.loc if isinstance(exc, Invalid) and exc.loc else ()
        raise Invalid(loc=("base", *inner), message=exc.message) from None
    base = body.base.model_dump(mode="json")
    firsts = {path: dim.candidates()[0] for path, dim in body.space.items()}
    for path, dim in body.space.items():
        for value in dim.candidates():
            payload = copy.deepcopy(base)
            for other, first in firsts.items():
                set_path(payload, other, first)
            set_path(payload, path, value)
            try:
                spec = JobSpec.model_validate(payload)
            except ValidationError as exc:
                err = exc.errors()[0]
                where = ".".join(str(p) for p in err["loc"]) or "spec"
                raise Invalid(
                    loc=("space", path),
                    message=f"value {value!r} gives an invalid spec: {where}: {err['msg']}",
                ) from None
            try:
                check(spec)
            except DomainError as exc:
                raise Invalid(loc=("space", path), message=f"value {value!r}: {exc.message}") from None
    return total


class _SpecCheck:
    """The checks of api.services.jobs.admit_spec for each candidate spec of a sweep: the budget
    (pure arithmetic, every time) and the project's datasets and init_from job (database reads,
    once per distinct value: a choice over 1,000 learning rates reads the base's dataset once)."""

    def __init__(self, session: Session, project: Project) -> None:
        self.session, self.project = session, project
        self.shapes: dict[tuple[str, str | None], tuple[int, int] | None] = {}
        self.parents: set[str] = set()

    def __call__(self, spec: JobSpec) -> None:
        datasets = (spec.data.dataset, spec.data.test_dataset)
        if datasets not in self.shapes:
            self.shapes[datasets] = check_datasets_exist(self.session, project=self.project, spec=spec)
        check_budget(spec, self.shapes[datasets])
        if spec.init_from is not None:
            key = (
                spec.init_from.model_dump_json() + spec.model.model_dump_json() + spec.data.model_dump_json()
            )
            if key not in self.parents:
                check_init_from(self.session, project=self.project, spec=spec)
                self.parents.add(key)


# ----- create, read, list, cancel -----------------------------------------------------------------
def find_by_idempotency_key(session: Session, *, project: Project, key: str) -> Sweep | None:
    return session.scalars(
        select(Sweep).where(Sweep.project_id == project.id, Sweep.idempotency_key == key)
    ).one_or_none()


def _replay(sweep: Sweep, digest: str) -> Sweep:
    check_same_body(sweep.config.get("request_hash"), digest)
    return sweep


def create_sweep(
    session: Session,
    *,
    project: Project,
    body: SweepSpec,
    idempotency_key: str | None = None,
    kind: str = "sweep",
) -> tuple[Sweep, bool]:
    """Insert the sweep and launch its first trials. Returns (sweep, created); a replay is not created."""
    payload = body.model_dump(mode="json")
    digest = request_hash({"kind": kind, **payload})
    if idempotency_key:
        existing = find_by_idempotency_key(session, project=project, key=idempotency_key)
        if existing is not None:
            return _replay(existing, digest), False
    total = plan(session, project=project, body=body)
    # Trials copy the base: its uploads are stored by id, as a job's are (space values that name an
    # upload are resolved as each trial is launched).
    payload["base"] = resolve_datasets(session, project=project, spec=body.base)[0].model_dump(mode="json")
    check_queue_room(session, project=project)  # its first trial must be able to wait in the queue
    sweep_id = new_id()
    sweep = Sweep(
        id=sweep_id,
        project_id=project.id,
        name=body.name or "sweep",
        status="running",
        config={
            "request": payload,
            "kind": kind,
            "total": total,
            # One seed for the sweep's life: GridSampler's order and each step's sampler derive from it.
            "seed": body.seed if body.seed is not None else int(sweep_id[:7], 16),
            "request_hash": digest,
        },
        findings=[],
        idempotency_key=idempotency_key,
    )
    session.add(sweep)
    winner = commit_or_winner(
        session,
        find_existing=lambda: find_by_idempotency_key(session, project=project, key=idempotency_key or ""),
    )
    if winner is not None:
        return _replay(winner, digest), False
    job_ids = scheduler.schedule(session, sweep_id=sweep.id)
    session.commit()
    scheduler.enqueue(job_ids)
    return sweep, True


def get_sweep(session: Session, *, project: Project, sweep_id: str, for_update: bool = False) -> Sweep:
    stmt = select(Sweep).where(Sweep.id == sweep_id, Sweep.project_id == project.id)
    sweep = session.scalars(stmt.with_for_update() if for_update else stmt).one_or_none()
    if sweep is None:
        raise NotFound(f"sweep {sweep_id} not found")
    return sweep


def trial_status(state: str, job_status: str | None) -> str:
    """What the trials table shows: the job's status, or pruned, or failed for a trial that never
    got a job (its sampled spec was invalid)."""
    if state == "pruned" or (state == "pruning" and job_status == "cancelled"):
        return "pruned"
    return job_status or "failed"


def progress(session: Session, *, sweep: Sweep) -> dict[str, int]:
    rows = session.execute(
        select(SweepTrial.state, Job.status, func.count())
        .outerjoin(Job, Job.id == SweepTrial.job_id)
        .where(SweepTrial.sweep_id == sweep.id)
        .group_by(SweepTrial.state, Job.status)
    ).all()
    return _progress(sweep, [(trial_status(state, status), n) for state, status, n in rows])


def _progress(sweep: Sweep, counted: list[tuple[str, int]]) -> dict[str, int]:
    out = dict.fromkeys(("queued", "running", "succeeded", "failed", "cancelled", "pruned"), 0)
    for status, n in counted:
        out[status] = out.get(status, 0) + int(n)
    done = out["succeeded"] + out["failed"] + out["cancelled"] + out["pruned"]
    return {"done": done, **out, "total": int(sweep.config["total"])}


def _best(session: Session, *, sweep: Sweep, mode: str) -> dict[str, Any] | None:
    best = scheduler.best_trial(session, sweep_id=sweep.id, mode=mode)
    if best is None:
        return None
    return {"job_id": best.job_id, "number": best.number, "value": best.value, "params": best.params}


def sweep_view(
    session: Session, *, sweep: Sweep, trials_after: int = -1, trials_limit: int = DEFAULT_TRIALS_PAGE
) -> dict[str, Any]:
    """The sweep with its progress, best trial, one page of the trials table and its findings."""
    spec = sweep_spec(sweep)
    rows = session.execute(
        select(
            SweepTrial.number,
            SweepTrial.job_id,
            SweepTrial.params,
            SweepTrial.value,
            SweepTrial.state,
            SweepTrial.error,
            Job.status,
            Job.verdict,
        )
        .outerjoin(Job, Job.id == SweepTrial.job_id)
        .where(SweepTrial.sweep_id == sweep.id, SweepTrial.number > trials_after)
        .order_by(SweepTrial.number)
        .limit(trials_limit + 1)
    ).all()
    trials = [
        {
            "job_id": job_id,
            "number": number,
            "params": params,
            "objective": finite_or_none(value),
            "verdict": verdict,
            "status": trial_status(state, status),
            "error": error,
        }
        for number, job_id, params, value, state, error, status, verdict in rows[:trials_limit]
    ]
    kind = sweep.config.get("kind", "sweep")
    return {
        "id": sweep.id,
        "name": sweep.name,
        "kind": kind,
        "status": sweep.status,
        "algorithm": spec.algorithm,
        "objective": spec.objective.model_dump(),
        "pruner": spec.pruner.type,
        "max_trials": int(sweep.config["total"]),
        "max_concurrency": spec.max_concurrency,
        "progress": progress(session, sweep=sweep),
        "best": _best(session, sweep=sweep, mode=spec.objective.mode or "min"),
        "trials": trials,
        "next_trials_after": (trials[-1]["number"] if trials else trials_after)
        if len(rows) > trials_limit
        else None,
        "findings": sweep.findings or [],
        "conclusion": study_conclusion(kind, sweep.findings or []),
        "config": sweep.config["request"],
        "created_at": sweep.created_at,
        "finished_at": sweep.finished_at,
    }


STUDY_CODES = {
    "study.depth": ("deeper_is_worse", "depth_comparison"),
    "study.batch_size": ("batch_size_sharpness", "batch_size_comparison"),
}


def study_conclusion(kind: str, findings: list[dict[str, Any]]) -> str | None:
    for code in STUDY_CODES.get(kind, ()):
        for finding in findings:
            if finding.get("code") == code:  # sweeps diagnosed before findings had one shape say "conclusion"
                return finding.get("recommendation") or finding.get("conclusion")
    return None


def read_sweep(session: Session, *, sweep: Sweep, trials_after: int, trials_limit: int) -> dict[str, Any]:
    """``sweep`` is the caller's (``api.deps.OwnedSweep``)."""
    view = sweep_view(session, sweep=sweep, trials_after=trials_after, trials_limit=trials_limit)
    if sweep.status == "running" and view["progress"]["running"] == 0:
        # Nothing runs, yet the sweep is not closed: a trial's step is due or was lost with its
        # worker, or its queued trials wait for one (deferred trials have no message until a step
        # sends them again). A scheduling step here is harmless (it is idempotent) and skips the
        # sweep if a worker holds its lock right now.
        job_ids = scheduler.schedule(session, sweep_id=sweep.id, skip_locked=True)
        session.commit()
        scheduler.enqueue(job_ids)
        session.refresh(sweep)
        view = sweep_view(session, sweep=sweep, trials_after=trials_after, trials_limit=trials_limit)
    return view


def list_sweeps(
    session: Session,
    *,
    project: Project,
    status: str | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> tuple[list[dict[str, Any]], str | None]:
    stmt = select(Sweep).where(Sweep.project_id == project.id)
    if status:
        if status not in SWEEP_STATUSES:
            raise Invalid(f"status: must be one of {', '.join(SWEEP_STATUSES)}")
        stmt = stmt.where(Sweep.status == status)
    if cursor:
        created, sweep_id = decode_keyset(cursor)
        stmt = stmt.where(
            or_(Sweep.created_at < created, and_(Sweep.created_at == created, Sweep.id < sweep_id))
        )
    rows = list(session.scalars(stmt.order_by(Sweep.created_at.desc(), Sweep.id.desc()).limit(limit + 1)))
    page = rows[:limit]
    counted: dict[str, list[tuple[str, int]]] = {s.id: [] for s in page}
    if page:
        for sweep_id, state, job_status, n in session.execute(
            select(SweepTrial.sweep_id, SweepTrial.state, Job.status, func.count())
            .outerjoin(Job, Job.id == SweepTrial.job_id)
            .where(SweepTrial.sweep_id.in_(list(counted)))
            .group_by(SweepTrial.sweep_id, SweepTrial.state, Job.status)
        ):
            counted[sweep_id].append((trial_status(state, job_status), n))
    items = [
        {
            "id": s.id,
            "name": s.name,
            "kind": s.config.get("kind", "sweep"),
            "status": s.status,
            "algorithm": s.config["request"].get("algorithm"),
            "best_job_id": s.best_job_id,
            "progress": _progress(s, counted[s.id]),
            "created_at": s.created_at,
            "finished_at": s.finished_at,
        }
        for s in page
    ]
    return items, encode_keyset(rows[limit - 1]) if len(rows) > limit else None


def cancel_sweep(session: Session, *, project: Project, sweep_id: str) -> Sweep:
    """Retried as a whole when Postgres aborts it in a deadlock: a worker that finishes one trial and
    claims the next locks two of the sweep's job rows in one statement, in an order no statement
    here can follow, and the cancel's updates may hold the second while waiting for the first."""

    def transaction() -> Sweep:
        try:
            sweep = get_sweep(session, project=project, sweep_id=sweep_id, for_update=True)
            if sweep.status != "running":
                raise Conflict(f"sweep {sweep_id} has already finished ({sweep.status})")
            scheduler.cancel(session, sweep=sweep)
            session.commit()
        except DBAPIError:
            session.rollback()
            raise
        return sweep

    return with_retries(transaction, attempts=CANCEL_ATTEMPTS)


# ----- studies: one-call grid sweeps over one field -------------------------------------------------
class StudyBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field("", max_length=200)
    base: JobSpec
    max_concurrency: int = Field(4, ge=1, le=1_000)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)


Depth = Annotated[int, Field(ge=0, le=64)]
Width = Annotated[int, Field(ge=1, le=65_536)]


class DepthStudy(StudyBase):
    """Depths as layer counts (each layer ``width`` wide, default the base's first layer) or as
    explicit ``model.hidden`` lists."""

    depths: list[Depth | list[Width]] = Field(min_length=2, max_length=16)
    width: int | None = Field(None, ge=1, le=65_536)

    def hidden_choices(self) -> list[list[int]]:
        width = self.width or (self.base.model.hidden[0] if self.base.model.hidden else 64)
        out: list[list[int]] = []
        for depth in self.depths:
            hidden = [width] * depth if isinstance(depth, int) else list(depth)
            if hidden not in out:
                out.append(hidden)
        return sorted(out, key=len)


class BatchSizeStudy(StudyBase):
    batch_sizes: list[Annotated[int, Field(ge=1, le=1_000_000)]] = Field(min_length=2, max_length=16)

    @field_validator("batch_sizes")
    @classmethod
    def _distinct_ascending(cls, sizes: list[int]) -> list[int]:
        return sorted(set(sizes))


def _study_spec(body: StudyBase, name: str, path: str, values: list[Any]) -> SweepSpec:
    return SweepSpec(
        name=body.name or name,
        base=body.base,
        space={path: Dim(type="choice", values=values)},
        algorithm="grid",
        max_concurrency=body.max_concurrency,
        seed=body.seed,
    )


def create_depth_study(
    session: Session, *, project: Project, body: DepthStudy, idempotency_key: str | None
) -> tuple[Sweep, bool]:
    choices = body.hidden_choices()
    if len({len(h) for h in choices}) < 2:
        raise Invalid(loc=("depths",), message="needs at least two different depths")
    if body.base.model.arch != "mlp":
        raise Invalid(loc=("base", "model", "arch"), message="a depth study varies model.hidden of an mlp")
    spec = _study_spec(body, "depth-study", "model.hidden", choices)
    return create_sweep(
        session, project=project, body=spec, idempotency_key=idempotency_key, kind="study.depth"
    )


def create_batch_size_study(
    session: Session, *, project: Project, body: BatchSizeStudy, idempotency_key: str | None
) -> tuple[Sweep, bool]:
    if len(body.batch_sizes) < 2:
        raise Invalid(loc=("batch_sizes",), message="needs at least two different batch sizes")
    if not body.base.analysis.hessian.enabled:
        raise Invalid(
            loc=("base", "analysis", "hessian", "enabled"),
            message="the batch-size study compares λ_max, which needs the Hessian spectra",
        )
    spec = _study_spec(body, "batch-size-study", "batch_size", list(body.batch_sizes))
    return create_sweep(
        session, project=project, body=spec, idempotency_key=idempotency_key, kind="study.batch_size"
    )
