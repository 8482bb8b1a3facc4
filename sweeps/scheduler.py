"""Scheduling: launch trials, record the ones that ended, close the sweep (see ``sweeps``).

``schedule`` is the locked step; ``record`` is the common step a worker runs after each trial, without
the sweep's lock. Both read the unfinished trials through one statement (``sync_trials``), which
records every trial whose job has ended and counts the ones still pending and busy.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Connection, bindparam, func, select, update
from sqlalchemy.orm import Session

from models.budget import budget_problems
from models.dataset_refs import resolve_uploads
from models.db import get_engine, session_scope, with_retries
from models.errors import Invalid
from models.jsonsafe import json_safe
from models.metrics import load_blocks
from models.patch import set_path
from models.settings import get_settings
from models.spec import Data, JobSpec
from models.summary import RunSummary
from models.tables import FINISHED_STATUSES, Job, Sweep, SweepTrial, new_id, utcnow
from sweeps.findings import cross_run_findings
from sweeps.spec import ACTIVE, ADMITTED, Objective, SweepSpec, spec_of, sweep_spec
from sweeps.study import ask, load_views
from worker.celery_app import enqueue_job

log = logging.getLogger("saddle.sweeps")

_T, _J, _S = SweepTrial.__table__, Job.__table__, Sweep.__table__


# ----- launching ------------------------------------------------------------------------------
def trial_spec(sweep: Sweep, spec: SweepSpec, number: int, params: dict[str, Any]) -> dict[str, Any]:
    payload = spec.base.model_dump(mode="json")
    for path, value in params.items():
        set_path(payload, path, value)
    payload["name"] = f"{sweep.name[:180]}#{number}"
    payload["tags"] = {**payload.get("tags", {}), "sweep": sweep.id, "trial": number}
    return payload


def launch(session: Session, *, sweep: Sweep, spec: SweepSpec, first: int, k: int) -> list[str]:
    """Insert k trials (jobs and trial rows) numbered from ``first``; returns the job ids to enqueue.
    A sampled point whose spec does not validate becomes a failed trial without a job."""
    # Random sampling needs no history: skipping the rebuild keeps a step O(1) at 10,000 trials.
    views = [] if spec.algorithm == "random" else load_views(session, sweep_id=sweep.id)
    job_ids: list[str] = []
    trials: list[SweepTrial] = []
    resolved: dict[str, tuple[Data, tuple[int, int] | None]] = {}
    for i, (params, attrs) in enumerate(ask(spec, sweep.config["seed"], views, first, k)):
        number = first + i
        trial = SweepTrial(
            sweep_id=sweep.id, number=number, params=json_safe(params), system_attrs=attrs, state="queued"
        )
        trials.append(trial)
        try:
            job_spec = JobSpec.model_validate(trial_spec(sweep, spec, number, params))
        except ValidationError as exc:
            _fail(trial, f"invalid spec: {exc.errors()[0]['msg']}")
            continue
        # The API checked each dimension's values; a combination of them can still be too big, and
        # an upload named by name may have been deleted since.
        try:
            job_spec, shape = _with_upload_ids(session, sweep.project_id, job_spec, resolved)
        except Invalid as exc:
            _fail(trial, exc.described)
            continue
        problems = budget_problems(job_spec, shape)
        if problems:
            _fail(trial, "over budget: " + "; ".join(problems))
            continue
        job = Job(
            id=new_id(),
            project_id=sweep.project_id,
            name=job_spec.name,
            spec=job_spec.model_dump(mode="json"),
            tags=dict(job_spec.tags),
            status="queued",
            kind="trial",
            sweep_id=sweep.id,
        )
        session.add(job)
        trial.job_id = job.id
        job_ids.append(job.id)
    session.add_all(trials)  # the unit of work inserts the jobs first: trial rows refer to them
    session.flush()
    return job_ids


def _with_upload_ids(
    session: Session, project_id: str, spec: JobSpec, cache: dict[str, tuple[Data, tuple[int, int] | None]]
) -> tuple[JobSpec, tuple[int, int] | None]:
    """The trial's spec naming its uploads by id, as every stored job does (models.dataset_refs), and
    (rows, features) of its upload: read once per distinct data section of a launch."""
    key = spec.data.model_dump_json()
    if key not in cache:
        resolved, upload = resolve_uploads(session, project_id=project_id, spec=spec)
        cache[key] = resolved.data, (upload.n_rows, upload.n_features) if upload else None
    data, shape = cache[key]
    return spec.model_copy(update={"data": data}), shape


def _fail(trial: SweepTrial, error: str) -> None:
    """A sampled point that gets no job: its spec is invalid or over the budget."""
    trial.state, trial.error, trial.finished_at = "failed", error, utcnow()


def lookahead(max_concurrency: int, algorithm: str = "tpe") -> int:
    """How many trials are queued beyond those that may run: enough that every worker of the sweep
    finds its next trial waiting when it ends one, and that launches come in batches (a step tops
    the queue up once half of it was taken). TPE learns from finished trials, so its queue stays
    short; random and grid points do not depend on results, so their batches can be larger."""
    if algorithm == "tpe":
        return min(2 * max_concurrency, 8)
    return min(4 * max_concurrency, 32)


# ----- recording ended trials -----------------------------------------------------------------
# Statements are built once (a statement built per call costs more Python than its round trip).
_LAST_NUMBER = select(func.max(_T.c.number)).where(_T.c.sweep_id == bindparam("b_sweep")).scalar_subquery()
# The sweep's status rides along, so the common step needs no statement of its own to read it.
_SWEEP_STATUS = select(_S.c.status).where(_S.c.id == bindparam("b_sweep")).scalar_subquery()
_LAST_AND_STATUS = select(_LAST_NUMBER, _SWEEP_STATUS)
_UNFINISHED = (
    select(_T.c.id, _T.c.state, _T.c.job_id, _J.c.status, _J.c.summary, _LAST_NUMBER, _SWEEP_STATUS)
    .select_from(_T.outerjoin(_J, _J.c.id == _T.c.job_id))
    .where(_T.c.sweep_id == bindparam("b_sweep"), _T.c.state.in_(ACTIVE))
    .order_by(_T.c.number)
)
_OUTCOME = (
    update(_T)
    .where(_T.c.id == bindparam("b_trial"), _T.c.state.in_(ACTIVE))
    .values(
        state=bindparam("b_state"),
        value=bindparam("b_value", type_=_T.c.value.type),
        error=bindparam("b_error", type_=_T.c.error.type),
        intermediate=bindparam("b_intermediate", type_=_T.c.intermediate.type),
        finished_at=bindparam("b_finished_at", type_=_T.c.finished_at.type),
    )
)


def objective_series(conn: Session | Connection, *, job_id: str, metric: str) -> dict[int, float]:
    series: dict[int, float] = {}
    for _, block in load_blocks(conn, [job_id], [metric]):  # type: ignore[arg-type]  # a Connection reads the same
        series = block.by_epoch()
    return series


def objective_value(objective: Objective, series: dict[int, float], summary: RunSummary) -> float | None:
    if not series:
        return None
    last = series[max(series)]
    value = last
    if objective.at == "best" and summary.best_epoch is not None:
        value = series.get(summary.best_epoch, last)
    return value if math.isfinite(value) else None


def trial_outcome(
    *,
    state: str,
    status: str | None,
    summary: dict[str, Any] | None,
    series: dict[int, float],
    spec: SweepSpec,
) -> dict[str, Any]:
    """The trial row's values once its job ended with ``status`` (None: its job was deleted)."""
    out: dict[str, Any] = {
        "value": None,
        "error": None,
        "intermediate": json_safe({str(e): v for e, v in series.items() if e >= 1}),
        "finished_at": utcnow(),
    }
    if status is None:
        out["state"], out["error"] = "failed", "its job was deleted"
    elif status == "succeeded":
        out["value"] = objective_value(spec.objective, series, RunSummary.of(summary))
        if out["value"] is None:
            out["state"] = "failed"
            out["error"] = f"objective {spec.objective.metric} was not recorded or is not finite"
        else:
            out["state"] = "complete"
    elif status == "cancelled":
        out["state"] = "pruned" if state == "pruning" else "cancelled"
    else:
        out["state"] = "failed"
    return out


@dataclass
class Pending:
    """What a step finds of the trials that have not finished."""

    launched: int = 0  # trial rows, finished or not
    sweep_status: str | None = None  # None: the sweep is gone
    states: list[str] = field(default_factory=list)  # of the trials whose job has not ended
    deferred: list[tuple[int, str]] = field(default_factory=list)  # (trial id, job id), by number

    @property
    def pending(self) -> int:
        """Not finished: queued, deferred or admitted."""
        return len(self.states)

    @property
    def busy(self) -> int:
        """Admitted and their job has not ended: what max_concurrency bounds."""
        return sum(state in ADMITTED for state in self.states)


def sync_trials(conn: Connection, *, sweep_id: str, spec: SweepSpec) -> Pending:
    """Record the end of every trial whose job ended, and count the ones that have not.

    The job's diagnosis is stored before it turns succeeded (worker.runner), so any step may record
    any ended trial; the conditional UPDATE makes a second recording of the same end a no-op. One
    statement reads the unfinished trials with their jobs, the launched count and the sweep's status."""
    rows = conn.execute(_UNFINISHED, {"b_sweep": sweep_id}).all()
    out = Pending()
    for trial_id, state, job_id, status, summary, *_ in rows:
        if status is not None and status not in FINISHED_STATUSES:
            out.states.append(state)
            if state == "deferred":
                out.deferred.append((trial_id, job_id))
            continue
        series = {} if status is None else objective_series(conn, job_id=job_id, metric=spec.objective.metric)
        outcome = trial_outcome(state=state, status=status, summary=summary, series=series, spec=spec)
        conn.execute(_OUTCOME, {"b_trial": trial_id} | {f"b_{key}": value for key, value in outcome.items()})
    top, out.sweep_status = (
        rows[0][-2:] if rows else conn.execute(_LAST_AND_STATUS, {"b_sweep": sweep_id}).one()
    )
    out.launched = 0 if top is None else int(top) + 1
    return out


# ----- the steps ------------------------------------------------------------------------------
def schedule(
    session: Session, *, sweep_id: str | None, finished_job: str | None = None, skip_locked: bool = False
) -> list[str]:
    """One scheduling step (see ``sweeps``). Returns the job ids to enqueue once the caller has
    committed: a message must never name a job that a rollback removed. ``sweep_id`` None: the sweep
    of ``finished_job`` if it is a trial (found in the same statement)."""
    which = (
        Sweep.id == sweep_id
        if sweep_id is not None
        else Sweep.id
        == select(Job.sweep_id).where(Job.id == finished_job, Job.kind == "trial").scalar_subquery()
    )
    # populate_existing: a caller that read the sweep earlier in this session gets the locked row's
    # current status, not the one it saw before the lock.
    sweep = session.scalars(
        select(Sweep)
        .where(which)
        .with_for_update(skip_locked=skip_locked)
        .execution_options(populate_existing=True)
    ).one_or_none()
    if sweep is None:
        return []
    spec = sweep_spec(sweep)
    state = sync_trials(session.connection(), sweep_id=sweep.id, spec=spec)
    if sweep.status != "running":
        return []
    # Deferred trials go back to the broker while there is room for them to run.
    resend = state.deferred[: max(0, spec.max_concurrency - state.busy)]
    if resend:
        session.execute(update(_T).where(_T.c.id.in_([t for t, _ in resend])).values(state="queued"))
    job_ids = [job_id for _, job_id in resend]
    total = int(sweep.config["total"])
    launched, pending = state.launched, state.pending
    # No more than the project may run at once, plus the lookahead, and never past its queue quota.
    settings = get_settings()
    concurrency = min(spec.max_concurrency, settings.max_running_jobs)
    target = concurrency + lookahead(concurrency, spec.algorithm)
    quota = settings.max_queued_jobs - _queued_jobs(session, project_id=sweep.project_id)
    while (room := min(target - pending, total - launched, quota)) > 0:
        # A point whose spec is invalid becomes a failed trial without a job: sample again.
        new = launch(session, sweep=sweep, spec=spec, first=launched, k=room)
        job_ids += new
        launched += room
        pending += len(new)
        quota -= len(new)
    if pending == 0 and launched >= total:
        close(session, sweep=sweep, spec=spec, status="succeeded")
    return job_ids


def record(job_id: str, sweep_id: str) -> bool:
    """The common step, without the sweep's lock and on a plain connection (a Session costs more than
    the statements): record the ended trials, then look whether the sweep needs the full step. True
    when it does not."""
    with get_engine().begin() as conn:
        spec, total = spec_of(conn, sweep_id=sweep_id)
        state = sync_trials(conn, sweep_id=sweep_id, spec=spec)
        if state.sweep_status is None:
            return False
        if state.sweep_status != "running":
            return True  # cancelled: the cancel closed it; nothing more to launch
        if state.deferred and state.busy < spec.max_concurrency:
            return False  # a deferred trial can run now
        queue = spec.max_concurrency + lookahead(spec.max_concurrency, spec.algorithm) // 2
        if state.launched < total and state.pending <= queue:
            return False  # top the queue up
        return bool(state.pending)  # nothing pending and all launched: the full step closes the sweep


def step(job_id: str | None, sweep_id: str | None = None) -> None:
    """After a trial's job ended: record it, and when the sweep needs more (a top-up of the queue,
    a deferred trial to send again, the end) run the locked scheduling step. Never raises."""
    try:
        if job_id is not None and sweep_id is not None and with_retries(lambda: record(job_id, sweep_id)):
            return
        enqueue(with_retries(_in_transaction(lambda s: schedule(s, sweep_id=sweep_id, finished_job=job_id))))
    except Exception:
        log.exception("sweep %s: scheduling step after job %s failed", sweep_id, job_id)


def _in_transaction(work: Callable[[Session], list[str]]) -> Callable[[], list[str]]:
    def transaction() -> list[str]:
        with session_scope() as session:
            return work(session)

    return transaction


def step_idle_sweeps() -> int:
    """Run a step for running sweeps with no trial pending: one that could not launch while its
    project's queue was full has no trial whose end would step it. Called by the reaper."""
    active = select(SweepTrial.id).where(SweepTrial.sweep_id == Sweep.id, SweepTrial.state.in_(ACTIVE))
    with session_scope() as session:
        idle = session.scalars(select(Sweep.id).where(Sweep.status == "running", ~active.exists())).all()
    for sweep_id in idle:
        step(None, sweep_id)
    return len(idle)


def _queued_jobs(session: Session, *, project_id: str) -> int:
    return int(
        session.scalar(
            select(func.count()).select_from(Job).where(Job.project_id == project_id, Job.status == "queued")
        )
        or 0
    )


def enqueue(job_ids: list[str]) -> None:
    for job_id in job_ids:
        try:
            enqueue_job(job_id)
        except Exception:  # Postgres holds the job; the reaper re-sends queued jobs after a broker loss
            log.exception("could not enqueue trial job %s; it stays queued in the database", job_id)


# ----- the end --------------------------------------------------------------------------------
def best_trial(session: Session, *, sweep_id: str, mode: str) -> SweepTrial | None:
    order = SweepTrial.value.desc() if mode == "max" else SweepTrial.value.asc()
    return session.scalars(
        select(SweepTrial)
        .where(SweepTrial.sweep_id == sweep_id, SweepTrial.state == "complete", SweepTrial.value.is_not(None))
        .order_by(order, SweepTrial.number)
        .limit(1)
    ).one_or_none()


def close(session: Session, *, sweep: Sweep, spec: SweepSpec, status: str) -> None:
    """End the sweep: best trial and findings. A sweep with no complete trial failed."""
    best = best_trial(session, sweep_id=sweep.id, mode=spec.objective.mode or "min")
    sweep.best_job_id = best.job_id if best else None
    sweep.status = status if status == "cancelled" or best is not None else "failed"
    sweep.finished_at = utcnow()
    try:
        with session.begin_nested():  # a bug in the findings must not keep the sweep from ending
            sweep.findings = json_safe(cross_run_findings(session, sweep_id=sweep.id))
    except Exception:
        log.exception("sweep %s: cross-run findings failed", sweep.id)
        sweep.findings = []


def cancel(session: Session, *, sweep: Sweep) -> None:
    """Cancel a locked, running sweep: queued trials end now, running ones stop at their next beat."""
    now = utcnow()
    session.execute(
        update(Job)
        .where(Job.sweep_id == sweep.id, Job.status == "queued")
        .values(status="cancelled", cancel_requested=True, finished_at=now)
    )
    session.execute(
        update(Job).where(Job.sweep_id == sweep.id, Job.status == "running").values(cancel_requested=True)
    )
    spec = sweep_spec(sweep)
    sync_trials(session.connection(), sweep_id=sweep.id, spec=spec)
    close(session, sweep=sweep, spec=spec, status="cancelled")
