"""Sweeps: Optuna's samplers and pruners driving ordinary jobs, with every bit of state in Postgres.

Torch-free: the API imports this module to validate sweeps and launch their first trials.

State
    A sweep is a ``sweeps`` row (its validated request in ``config``) and one ``sweep_trials`` row per
    trial: the sampled parameters, its state (queued, deferred, running, pruning, complete, pruned,
    failed, cancelled), the objective, the intermediate values reported at epoch boundaries and the
    sampler's per-trial memory (``system_attrs``: GridSampler's grid id, successive halving's
    rungs). The trial's job is an ordinary ``jobs`` row (``kind = "trial"``, ``sweep_id`` set).
    No Optuna storage is kept: each scheduling step rebuilds an in-memory study from the trial rows
    (``optuna.trial.create_trial`` + ``Study.add_trials``), asks it, writes the answer as rows and
    drops it. Nothing lives in a process, so an API or worker restart loses nothing, and Optuna's
    own tables never enter our schema.

Scheduling
    ``schedule(session, sweep_id)`` is the one step. It locks the sweep row (SELECT ... FOR UPDATE,
    so two steps cannot both fill the same free slot), records each trial whose job has ended (the
    job's status is the truth; the objective is read from the job's metrics), launches trials until
    ``max_concurrency + lookahead(...)`` are pending or ``max_trials`` have been
    launched, and once nothing is pending and nothing is left to launch it closes the sweep: best
    trial, then the cross-run findings. The step is idempotent and runs when the sweep is created
    (API), after every trial's ``run_job`` (``on_job_finished``, the worker's hook), and from
    ``GET /v1/sweeps/{id}`` when a running sweep has no running job, which heals a hook lost to a
    worker killed between a job's end and its step.

    Trials are launched *ahead*: ``lookahead(max_concurrency)`` more are queued than may run, so a
    worker that ends a trial finds the next one waiting in the broker and never waits for the
    scheduler. The worker's hook therefore only hands the step to a per-process thread
    (``_Stepper``) and returns. There the common step (``record``) writes the trial's outcome
    without the sweep's lock, in three statements; only when the queue is half empty, a deferred
    trial can run, or nothing is left does it take the lock for ``schedule``, which launches a batch.

Admission (max_concurrency)
    A launched trial is ``queued``; it becomes ``running`` only through ``admit_trial``, which the
    worker's claim calls in its own transaction before the job counts as started. Under a per-sweep
    lock (Postgres advisory lock; SQLite's single writer) it counts the admitted trials whose job has
    not ended; below ``max_concurrency`` the trial is admitted, else it is ``deferred``, the delivery
    is skipped, and a later step (a slot freed) sends it again. So queued trials never count as
    running, and no more than ``max_concurrency`` trials of a sweep ever run at once, however many
    workers there are.

Pruning
    Optuna's pruners judge intermediate values reported at epoch boundaries. The trial's objective
    metric is written once per epoch by the training worker, so the worker process that trains a
    trial also runs a ``PruneWatcher`` thread (started by ``admit`` once the trial is admitted,
    stopped by the hook or ``task_postrun``). When new epochs appear in the series it rebuilds the study, gives
    the pruner this trial with all its epoch values, stores what the pruner remembers, and when told
    to prune marks the trial ``pruning`` and sets the job's ``cancel_requested`` — exactly what
    ``POST /v1/jobs/{id}/cancel`` does; the job's heartbeat stops training at its next beat and the
    hook records the trial as ``pruned``. The watcher runs beside the training loop in the trial's own
    process, so it never waits for a free worker slot, and it writes only its own trial's row.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from sqlalchemy import Connection, bindparam, case, delete, func, select, update
from sqlalchemy.orm import Session

from models.budget import budget_problems, uploaded_shape
from models.db import get_engine, session_scope, with_retries
from models.findings import Finding, write_diagnoses
from models.jsonsafe import json_safe
from models.settings import get_settings
from models.spec import JobSpec
from models.tables import (
    FINISHED_STATUSES,
    Diagnosis,
    Job,
    MetricPoint,
    Spectrum,
    Sweep,
    SweepTrial,
    new_id,
    utcnow,
)
from worker.celery_app import RUN_JOB, enqueue_job

if TYPE_CHECKING:
    import optuna

log = logging.getLogger("saddle.sweeps")

MAX_TRIALS = 10_000
MAX_GRID_POINTS = 10_000
# queued: launched, its message is in the broker; deferred: a worker took it while the sweep had
# max_concurrency trials running, so it waits for a step to send it again; running: admitted (its job
# may be running); pruning: told to stop, its job has not ended yet.
ADMITTED = ("running", "pruning")
ACTIVE = ("queued", "deferred", *ADMITTED)  # not finished yet
TRIAL_STATES = (*ACTIVE, "complete", "pruned", "failed", "cancelled")
SWEEP_STATUSES = ("running", "succeeded", "failed", "cancelled")
# A trial is better than its sibling only by a margin that noise between seeds does not reach.
WORSE_RELATIVE = 0.10
WORSE_ABSOLUTE = 0.01
MAX_TABLE_ROWS = 100
MAX_GROUPS = 20
ADMISSION_LOCK = 0x5357  # the namespace of the sweeps' advisory locks (pg_advisory_xact_lock(ns, key))


# ----- the request ----------------------------------------------------------------------------
class Dim(BaseModel):
    """One dimension of the search space, at a dotted JobSpec path."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["choice", "uniform", "loguniform", "int"]
    values: list[Any] | None = Field(None, min_length=1, max_length=1000)
    low: float | None = None
    high: float | None = None
    step: float | None = Field(None, gt=0)
    log: bool = False

    @model_validator(mode="after")
    def _shape(self) -> Dim:
        if self.type == "choice":
            if self.values is None:
                raise ValueError("choice needs values")
            if self.low is not None or self.high is not None or self.step is not None or self.log:
                raise ValueError("choice takes values only (no low, high, step or log)")
            return self
        if self.values is not None:
            raise ValueError(f"{self.type} takes low and high, not values")
        if self.low is None or self.high is None:
            raise ValueError(f"{self.type} needs low and high")
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError("low and high must be finite")
        if self.type == "int":
            if not (self.low.is_integer() and self.high.is_integer()):
                raise ValueError("int bounds must be integers")
            if self.step is not None and not self.step.is_integer():
                raise ValueError("int step must be an integer")
            if self.low > self.high:
                raise ValueError(f"low ({self.low:g}) must not exceed high ({self.high:g})")
            if self.log and (self.low < 1 or (self.step or 1) != 1):
                raise ValueError("log int needs low >= 1 and no step")
            return self
        if self.log:
            raise ValueError("log applies to int only; use type loguniform")
        if not self.low < self.high:
            raise ValueError(f"low ({self.low:g}) must be below high ({self.high:g})")
        if self.type == "loguniform":
            if self.low <= 0:
                raise ValueError("loguniform needs low > 0")
            if self.step is not None:
                raise ValueError("loguniform takes no step")
        elif self.step is not None and self.step > self.high - self.low:
            raise ValueError("step is larger than high - low")
        return self

    def grid(self) -> list[Any] | None:
        """The points a grid walks: choices or the integers low..high by step; None if continuous."""
        if self.type == "choice":
            return list(self.values or [])
        if self.type == "int":
            return list(range(int(self.low or 0), int(self.high or 0) + 1, int(self.step or 1)))
        return None

    def candidates(self) -> list[Any]:
        """Values whose specs are validated up front: every choice, or both bounds."""
        if self.type == "choice":
            return list(self.values or [])
        if self.type == "int":
            return [int(self.low or 0), int(self.high or 0)]
        return [self.low, self.high]

    def distribution(self) -> optuna.distributions.BaseDistribution:
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.type == "choice":
            # Optuna's categorical choices must be scalars; model.hidden choices are lists, so the
            # sampler sees the index and the trial row keeps the value.
            return CategoricalDistribution(list(range(len(self.values or []))))
        if self.type == "int":
            return IntDistribution(
                int(self.low or 0), int(self.high or 0), log=self.log, step=int(self.step or 1)
            )
        return FloatDistribution(
            float(self.low or 0), float(self.high or 0), log=self.type == "loguniform", step=self.step
        )

    def to_internal(self, value: Any) -> Any:
        if self.type == "choice":
            keys = [_canonical(v) for v in self.values or []]
            return keys.index(_canonical(value))
        return int(value) if self.type == "int" else float(value)

    def from_internal(self, value: Any) -> Any:
        if self.type == "choice":
            return copy.deepcopy((self.values or [])[int(value)])
        return int(value) if self.type == "int" else float(value)


class Objective(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metric: str = Field("val/loss", pattern=r"^(train|val|test)/[a-z][a-z0-9_]*$")
    mode: Literal["min", "max"] | None = Field(None, description="default: max for accuracy, else min")
    # best: the metric at the best checkpoint (the epoch of lowest validation loss); last: final epoch.
    at: Literal["best", "last"] = "best"

    @model_validator(mode="after")
    def _default_mode(self) -> Objective:
        if self.mode is None:
            self.mode = "max" if self.metric.endswith("accuracy") else "min"
        return self


class PrunerSpec(BaseModel):
    """A pruner and its Optuna parameters; the plain strings none|median|successive_halving also work."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["none", "median", "successive_halving"] = "none"
    n_startup_trials: int = Field(5, ge=0, le=MAX_TRIALS)  # median: finished trials before pruning
    n_warmup_steps: int = Field(0, ge=0, le=10_000)  # median: epochs before a trial can be pruned
    interval_steps: int = Field(1, ge=1, le=10_000)
    min_resource: int | None = Field(None, ge=1, le=10_000)  # successive halving; None: Optuna's auto
    reduction_factor: int = Field(4, ge=2, le=100)
    min_early_stopping_rate: int = Field(0, ge=0, le=100)


class SweepSpec(BaseModel):
    """The body of ``POST /v1/sweeps`` (DESIGN.md's contract), stored as the sweep's config."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("", max_length=200)
    base: JobSpec
    space: dict[str, Dim] = Field(min_length=1, max_length=32)
    algorithm: Literal["grid", "random", "tpe"] = "random"
    objective: Objective = Field(default_factory=Objective)
    max_trials: int | None = Field(
        None, ge=1, le=MAX_TRIALS, description="required for random and tpe; grid: the grid's size"
    )
    max_concurrency: int = Field(4, ge=1, le=1_000)
    pruner: PrunerSpec = Field(default_factory=PrunerSpec)
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="sampler seed; default from the id")

    @field_validator("pruner", mode="before")
    @classmethod
    def _pruner_by_name(cls, value: Any) -> Any:
        return {"type": value} if isinstance(value, str) else value


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def set_path(spec: dict[str, Any], path: str, value: Any) -> None:
    """Set a dotted path in a spec dict, creating objects on the way (e.g. data.params.noise)."""
    *parents, leaf = path.split(".")
    node = spec
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[leaf] = copy.deepcopy(value)


def get_path(spec: dict[str, Any], path: str) -> Any:
    node: Any = spec
    for part in path.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


# ----- stored config, cached per process (a sweep's config never changes) -----------------------
_spec_cache: dict[str, tuple[SweepSpec, int]] = {}  # sweep id -> (request, trials in all)


def _cache_spec(sweep_id: str, config: dict[str, Any]) -> tuple[SweepSpec, int]:
    cached = _spec_cache.get(sweep_id)
    if cached is None:
        cached = SweepSpec.model_validate(config["request"]), int(config["total"])
        if len(_spec_cache) > 1_000:
            _spec_cache.clear()
        _spec_cache[sweep_id] = cached
    return cached


def sweep_spec(sweep: Sweep) -> SweepSpec:
    return _cache_spec(sweep.id, sweep.config)[0]


def _spec_of(conn: Connection, sweep_id: str) -> tuple[SweepSpec, int]:
    """The sweep's request and size by id, read from the database once per process."""
    cached = _spec_cache.get(sweep_id)
    if cached is None:
        config = conn.execute(
            select(Sweep.__table__.c.config).where(Sweep.__table__.c.id == sweep_id)
        ).scalar()
        if config is None:
            raise LookupError(f"sweep {sweep_id} not found")
        cached = _cache_spec(sweep_id, config)
    return cached


# ----- the Optuna bridge ----------------------------------------------------------------------
_optuna_module: Any = None


def _optuna() -> Any:
    global _optuna_module
    if _optuna_module is None:
        import optuna

        # Once per process: setLevel clears every logger's cache, a millisecond each time.
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        _optuna_module = optuna
    return _optuna_module


@dataclass
class TrialView:
    """What the study needs of one trial row."""

    number: int
    params: dict[str, Any]
    state: str
    value: float | None
    intermediate: dict[str, Any]
    system_attrs: dict[str, Any]


def load_views(session: Session, sweep_id: str) -> list[TrialView]:
    rows = session.execute(
        select(
            SweepTrial.number,
            SweepTrial.params,
            SweepTrial.state,
            SweepTrial.value,
            SweepTrial.intermediate,
            SweepTrial.system_attrs,
        )
        .where(SweepTrial.sweep_id == sweep_id)
        .order_by(SweepTrial.number)
    ).all()
    return [TrialView(*row) for row in rows]


def distributions(spec: SweepSpec) -> dict[str, Any]:
    return {path: dim.distribution() for path, dim in spec.space.items()}


def make_sampler(spec: SweepSpec, seed: int, n_existing: int) -> Any:
    samplers = _optuna().samplers
    if spec.algorithm == "grid":
        # GridSampler shuffles the grid with its seed and gives trial k the k-th point, so the seed
        # must stay the same at every rebuild of the study.
        space = {path: [dim.to_internal(v) for v in dim.grid() or []] for path, dim in spec.space.items()}
        return samplers.GridSampler(space, seed=seed)
    # A fresh sampler per step: with the same seed every step would draw the same first point.
    if spec.algorithm == "tpe":
        return samplers.TPESampler(seed=seed + n_existing)
    return samplers.RandomSampler(seed=seed + n_existing)


def make_pruner(spec: SweepSpec) -> Any:
    pruners = _optuna().pruners
    p = spec.pruner
    if p.type == "median":
        return pruners.MedianPruner(
            n_startup_trials=p.n_startup_trials,
            n_warmup_steps=p.n_warmup_steps,
            interval_steps=p.interval_steps,
        )
    if p.type == "successive_halving":
        return pruners.SuccessiveHalvingPruner(
            min_resource=p.min_resource or "auto",
            reduction_factor=p.reduction_factor,
            min_early_stopping_rate=p.min_early_stopping_rate,
        )
    return pruners.NopPruner()


def _intermediate(values: dict[str, Any]) -> dict[int, float]:
    return {int(k): (math.nan if v is None else float(v)) for k, v in values.items()}


def build_study(spec: SweepSpec, views: list[TrialView], sampler: Any, pruner: Any) -> Any:
    """An in-memory study holding the given trials, numbered as in our table (views are ordered and
    contiguous from 0, so Optuna's numbers match ours)."""
    optuna = _optuna()
    state_of = {
        "complete": optuna.trial.TrialState.COMPLETE,
        "pruned": optuna.trial.TrialState.PRUNED,
        "failed": optuna.trial.TrialState.FAIL,
        "cancelled": optuna.trial.TrialState.FAIL,
        "running": optuna.trial.TrialState.RUNNING,
        "pruning": optuna.trial.TrialState.RUNNING,
        "queued": optuna.trial.TrialState.RUNNING,  # pending points: samplers avoid repeating them
        "deferred": optuna.trial.TrialState.RUNNING,
    }
    direction = "maximize" if spec.objective.mode == "max" else "minimize"
    study = optuna.create_study(direction=direction, sampler=sampler, pruner=pruner)
    dists = distributions(spec)
    trials = []
    for view in views:
        state = state_of[view.state]
        value = view.value if state == optuna.trial.TrialState.COMPLETE else None
        if state == optuna.trial.TrialState.COMPLETE and (value is None or not math.isfinite(value)):
            state, value = optuna.trial.TrialState.FAIL, None
        trials.append(
            optuna.trial.create_trial(
                state=state,
                value=value,
                params={
                    p: dists[p].to_external_repr(spec.space[p].to_internal(v)) for p, v in view.params.items()
                },
                distributions={p: dists[p] for p in view.params},
                system_attrs=dict(view.system_attrs),
                intermediate_values=_intermediate(view.intermediate),
            )
        )
    study.add_trials(trials)
    return study


def ask(
    spec: SweepSpec, seed: int, views: list[TrialView], first: int, k: int
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """k new points for trials numbered from ``first``: (params by dotted path, the sampler's system
    attrs to keep with the trial). ``views`` is the history (all trials; none for random sampling)."""
    study = build_study(spec, views, make_sampler(spec, seed, first), make_pruner(spec))
    dists = distributions(spec)
    out = []
    for _ in range(k):
        trial = study.ask(dists)
        frozen = study.get_trials(deepcopy=False)[trial.number]
        params = {
            p: spec.space[p].from_internal(dists[p].to_internal_repr(v)) for p, v in trial.params.items()
        }
        out.append((params, json_safe(dict(frozen.system_attrs))))
    return out


# ----- scheduling -----------------------------------------------------------------------------
def trial_spec(sweep: Sweep, spec: SweepSpec, number: int, params: dict[str, Any]) -> dict[str, Any]:
    payload = spec.base.model_dump(mode="json")
    for path, value in params.items():
        set_path(payload, path, value)
    payload["name"] = f"{sweep.name[:180]}#{number}"
    payload["tags"] = {**payload.get("tags", {}), "sweep": sweep.id, "trial": number}
    return payload


def launch(session: Session, sweep: Sweep, spec: SweepSpec, first: int, k: int) -> list[str]:
    """Insert k trials (jobs and trial rows) numbered from ``first``; returns the job ids to enqueue.
    A sampled point whose spec does not validate becomes a failed trial without a job."""
    # Random sampling needs no history: skipping the rebuild keeps a step O(1) at 10,000 trials.
    views = [] if spec.algorithm == "random" else load_views(session, sweep.id)
    job_ids: list[str] = []
    trials: list[SweepTrial] = []
    shapes: dict[str, tuple[int, int] | None] = {}
    for i, (params, attrs) in enumerate(ask(spec, sweep.config["seed"], views, first, k)):
        number = first + i
        payload = trial_spec(sweep, spec, number, params)
        try:
            job_spec = JobSpec.model_validate(payload)
        except ValidationError as exc:
            trials.append(
                _failed_trial(sweep, number, params, attrs, f"invalid spec: {exc.errors()[0]['msg']}")
            )
            continue
        # The API checked each dimension's values; a combination of them can still be too big.
        dataset = job_spec.data.dataset
        if dataset not in shapes:
            shapes[dataset] = uploaded_shape(session, sweep.project_id, dataset)
        problems = budget_problems(job_spec, shapes[dataset])
        if problems:
            trials.append(_failed_trial(sweep, number, params, attrs, "over budget: " + "; ".join(problems)))
            continue
        payload = job_spec.model_dump(mode="json")
        job = Job(
            id=new_id(),
            project_id=sweep.project_id,
            name=job_spec.name,
            spec=payload,
            tags=dict(job_spec.tags),
            status="queued",
            kind="trial",
            sweep_id=sweep.id,
        )
        session.add(job)
        trials.append(
            SweepTrial(
                sweep_id=sweep.id,
                number=number,
                job_id=job.id,
                params=json_safe(params),
                system_attrs=attrs,
                state="queued",
            )
        )
        job_ids.append(job.id)
    session.add_all(trials)  # the unit of work inserts the jobs first: trial rows refer to them
    session.flush()
    return job_ids


def _failed_trial(
    sweep: Sweep, number: int, params: dict[str, Any], attrs: dict[str, Any], error: str
) -> SweepTrial:
    """A sampled point that gets no job: its spec is invalid or over the budget."""
    return SweepTrial(
        sweep_id=sweep.id,
        number=number,
        params=json_safe(params),
        system_attrs=attrs,
        state="failed",
        error=error,
        finished_at=utcnow(),
    )


# Built once (a statement built per call costs more Python than its round trip).
_OBJECTIVE_SERIES = (
    select(MetricPoint.epoch, MetricPoint.value)
    .where(MetricPoint.job_id == bindparam("b_job"), MetricPoint.name == bindparam("b_metric"))
    .order_by(MetricPoint.step)
)


def objective_series(session: Session | Connection, job_id: str, metric: str) -> dict[int, float]:
    rows = session.execute(_OBJECTIVE_SERIES, {"b_job": job_id, "b_metric": metric}).all()
    return {int(epoch): float(value) for epoch, value in rows}


def objective_value(objective: Objective, series: dict[int, float], summary: dict[str, Any]) -> float | None:
    if not series:
        return None
    last = series[max(series)]
    value = last
    if objective.at == "best":
        best_epoch = summary.get("best_epoch")
        value = series.get(int(best_epoch), last) if best_epoch is not None else last
    return value if math.isfinite(value) else None


def trial_outcome(
    state: str, status: str, summary: dict[str, Any] | None, series: dict[int, float], spec: SweepSpec
) -> dict[str, Any]:
    """The trial row's values once its job ended with ``status``."""
    out: dict[str, Any] = {
        "intermediate": json_safe({str(e): v for e, v in series.items() if e >= 1}),
        "finished_at": utcnow(),
    }
    if status == "succeeded":
        out["value"] = objective_value(spec.objective, series, summary or {})
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


def finish_trial(
    session: Session, trial: SweepTrial, status: str, summary: dict[str, Any], spec: SweepSpec
) -> None:
    series = objective_series(session, trial.job_id or "", spec.objective.metric)
    for key, value in trial_outcome(trial.state, status, summary, series, spec).items():
        setattr(trial, key, value)


def lookahead(max_concurrency: int, algorithm: str = "tpe") -> int:
    """How many trials are queued beyond those that may run: enough that every worker of the sweep
    finds its next trial waiting when it ends one, and that launches come in batches (a step tops
    the queue up once half of it was taken). TPE learns from finished trials, so its queue stays
    short; random and grid points do not depend on results, so their batches can be larger."""
    if algorithm == "tpe":
        return min(2 * max_concurrency, 8)
    return min(4 * max_concurrency, 32)


def is_trial(job_id: str) -> bool:
    """Whether this process admitted ``job_id`` as a sweep's trial (until its hook ran)."""
    return isinstance(_trial_sweeps.get(job_id), str)


@dataclass
class Pending:
    """What one step finds of the trials that have not finished."""

    launched: int = 0  # trial rows, finished or not
    pending: int = 0  # not finished: queued, deferred or admitted
    busy: int = 0  # admitted and their job has not ended: what max_concurrency bounds
    deferred: list[SweepTrial] = field(default_factory=list)


def sync_trials(session: Session, sweep: Sweep, spec: SweepSpec, finished_job: str | None = None) -> Pending:
    """Record the end of every trial whose job ended, and count the ones that have not.

    The job's diagnosis is stored before it turns succeeded (worker.runner), so any step may record
    any ended trial. One statement reads the unfinished trials with their jobs and the launched count.
    ``finished_job`` is kept for callers that name the job whose end triggered the step."""
    launched = (
        select(func.count()).select_from(SweepTrial).where(SweepTrial.sweep_id == sweep.id).scalar_subquery()
    )
    rows = session.execute(
        select(SweepTrial, Job.status, Job.summary, launched)
        .outerjoin(Job, Job.id == SweepTrial.job_id)
        .where(SweepTrial.sweep_id == sweep.id, SweepTrial.state.in_(ACTIVE))
        .order_by(SweepTrial.number)
    ).all()
    out = Pending()
    for trial, status, summary, _ in rows:
        if status is None:  # its job was deleted (SET NULL)
            trial.state, trial.error, trial.finished_at = "failed", "its job was deleted", utcnow()
            continue
        if status in FINISHED_STATUSES:
            finish_trial(session, trial, status, summary, spec)
            continue
        out.pending += 1
        if trial.state in ADMITTED:
            out.busy += 1
        elif trial.state == "deferred":
            out.deferred.append(trial)
    out.launched = int((rows[0][-1] if rows else session.scalar(select(launched))) or 0)
    return out


def schedule(
    session: Session, sweep_id: str | None, finished_job: str | None = None, skip_locked: bool = False
) -> list[str]:
    """One scheduling step (see the module docstring). Returns the job ids to enqueue once the caller
    has committed: a message must never name a job that a rollback removed. ``sweep_id`` None: the
    sweep of ``finished_job`` if it is a trial (found in the same statement)."""
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
    state = sync_trials(session, sweep, spec, finished_job)
    if sweep.status != "running":
        return []
    job_ids: list[str] = []
    # Deferred trials go back to the broker while there is room for them to run.
    for trial in state.deferred[: max(0, spec.max_concurrency - state.busy)]:
        trial.state = "queued"
        job_ids.append(trial.job_id or "")
    total = int(sweep.config["total"])
    launched, pending = state.launched, state.pending
    # No more than the project may run at once, plus the lookahead, and never past its queue quota.
    settings = get_settings()
    concurrency = min(spec.max_concurrency, settings.max_running_jobs)
    target = concurrency + lookahead(concurrency, spec.algorithm)
    quota = settings.max_queued_jobs - _queued_jobs(session, sweep.project_id)
    while (room := min(target - pending, total - launched, quota)) > 0:
        # A point whose spec is invalid becomes a failed trial without a job: sample again.
        new = launch(session, sweep, spec, launched, room)
        job_ids += new
        launched += room
        pending += len(new)
        quota -= len(new)
    if pending == 0 and launched >= total:
        close(session, sweep, spec, "succeeded")
    return job_ids


def _queued_jobs(session: Session, project_id: str) -> int:
    return int(
        session.scalar(
            select(func.count()).select_from(Job).where(Job.project_id == project_id, Job.status == "queued")
        )
        or 0
    )


def step_idle_sweeps() -> int:
    """Run a step for running sweeps with no trial pending: one that could not launch while its
    project's queue was full has no trial whose end would step it. Called by the reaper."""
    active = select(SweepTrial.id).where(SweepTrial.sweep_id == Sweep.id, SweepTrial.state.in_(ACTIVE))
    with session_scope() as session:
        idle = session.scalars(select(Sweep.id).where(Sweep.status == "running", ~active.exists())).all()
    for sweep_id in idle:
        step(None, sweep_id)
    return len(idle)


def best_trial(session: Session, sweep_id: str, mode: str) -> SweepTrial | None:
    order = SweepTrial.value.desc() if mode == "max" else SweepTrial.value.asc()
    return session.scalars(
        select(SweepTrial)
        .where(SweepTrial.sweep_id == sweep_id, SweepTrial.state == "complete", SweepTrial.value.is_not(None))
        .order_by(order, SweepTrial.number)
        .limit(1)
    ).one_or_none()


def close(session: Session, sweep: Sweep, spec: SweepSpec, status: str) -> None:
    """End the sweep: best trial and findings. A sweep with no complete trial failed."""
    best = best_trial(session, sweep.id, spec.objective.mode or "min")
    sweep.best_job_id = best.job_id if best else None
    sweep.status = status if status == "cancelled" or best is not None else "failed"
    sweep.finished_at = utcnow()
    try:
        with session.begin_nested():  # a bug in the findings must not keep the sweep from ending
            sweep.findings = json_safe(cross_run_findings(session, sweep, spec))
    except Exception:
        log.exception("sweep %s: cross-run findings failed", sweep.id)
        sweep.findings = []


def enqueue(job_ids: list[str]) -> None:
    for job_id in job_ids:
        try:
            enqueue_job(job_id)
        except Exception:  # Postgres holds the job; the reaper re-sends queued jobs after a broker loss
            log.exception("could not enqueue trial job %s; it stays queued in the database", job_id)


def step(job_id: str | None, sweep_id: str | None = None) -> None:
    """After a trial's job ended: record it, and when the sweep needs more (a top-up of the queue,
    a deferred trial to send again, the end) run the locked scheduling step. Never raises."""
    try:
        if job_id is not None and sweep_id is not None and with_retries(lambda: record(job_id, sweep_id)):
            return

        def transaction() -> list[str]:
            with session_scope() as session:
                return schedule(session, sweep_id, finished_job=job_id)

        enqueue(with_retries(transaction))
    except Exception:
        log.exception("sweep %s: scheduling step after job %s failed", sweep_id, job_id)


_T, _J, _S = SweepTrial.__table__, Job.__table__, Sweep.__table__


def _record_statements() -> dict[str, Any]:
    """Built once (a statement built per call costs more Python than its round trip)."""
    last = select(func.max(_T.c.number)).where(_T.c.sweep_id == bindparam("b_sweep"))
    return {
        "trial": select(_T.c.id, _T.c.state, _J.c.status, _J.c.summary, _S.c.status)
        .select_from(_T.join(_J, _J.c.id == _T.c.job_id).join(_S, _S.c.id == _T.c.sweep_id))
        .where(_T.c.job_id == bindparam("b_job")),
        "outcome": update(_T)
        .where(_T.c.id == bindparam("b_trial"), _T.c.state.in_(ACTIVE))
        .values(
            state=bindparam("b_state"),
            value=bindparam("b_value", type_=_T.c.value.type),
            error=bindparam("b_error", type_=_T.c.error.type),
            intermediate=bindparam("b_intermediate", type_=_T.c.intermediate.type),
            finished_at=bindparam("b_finished_at", type_=_T.c.finished_at.type),
        ),
        "pending": select(_T.c.state, _J.c.status, last.scalar_subquery())
        .select_from(_T.outerjoin(_J, _J.c.id == _T.c.job_id))
        .where(_T.c.sweep_id == bindparam("b_sweep"), _T.c.state.in_(ACTIVE)),
        "last": last,
    }


_RECORD = _record_statements()


def record(job_id: str, sweep_id: str) -> bool:
    """The common step, without the sweep's lock and in Core statements: write the ended trial's
    outcome, then look whether the sweep needs the full step. True when it does not."""
    with get_engine().begin() as conn:  # a plain connection: a Session costs more than the statements
        spec, total = _spec_of(conn, sweep_id)
        row = conn.execute(_RECORD["trial"], {"b_job": job_id}).first()
        if row is None:
            return False
        trial_id, state, status, summary, sweep_status = row
        if state in ACTIVE and status in FINISHED_STATUSES:
            series = objective_series(conn, job_id, spec.objective.metric)
            outcome = trial_outcome(state, status, summary, series, spec)
            conn.execute(
                _RECORD["outcome"],
                {"b_trial": trial_id, "b_value": None, "b_error": None}
                | {f"b_{key}": value for key, value in outcome.items()},
            )
        if sweep_status != "running":
            return True  # cancelled: the cancel closed it; nothing more to launch
        rows = conn.execute(_RECORD["pending"], {"b_sweep": sweep_id}).all()
        top = rows[0][2] if rows else conn.scalar(_RECORD["last"], {"b_sweep": sweep_id})
        launched = 0 if top is None else int(top) + 1
        pending = [
            st for st, job_status, _ in rows if job_status is not None and job_status not in FINISHED_STATUSES
        ]
        busy = sum(st in ADMITTED for st in pending)
        if "deferred" in pending and busy < spec.max_concurrency:
            return False  # a deferred trial can run now
        if (
            launched < total
            and len(pending) <= spec.max_concurrency + lookahead(spec.max_concurrency, spec.algorithm) // 2
        ):
            return False  # top the queue up
        return bool(pending)  # nothing pending and all launched: the full step closes the sweep


class _Stepper(threading.Thread):
    """The worker process's scheduling thread: steps for the trials this process ended, run while the
    process already trains its next trial. Steps queued together for one sweep run once (a step
    records every ended trial of its sweep)."""

    def __init__(self) -> None:
        super().__init__(daemon=True, name="sweep-stepper")
        self.inbox: queue.Queue[tuple[str, str | None]] = queue.Queue()

    def submit(self, job_id: str, sweep_id: str | None) -> None:
        self.inbox.put((job_id, sweep_id))

    def run(self) -> None:
        while True:
            batch = [self.inbox.get()]
            while True:
                try:
                    batch.append(self.inbox.get_nowait())
                except queue.Empty:
                    break
            stepped: set[str] = set()
            for job_id, sweep_id in batch:
                if sweep_id is None or sweep_id not in stepped:
                    step(job_id, sweep_id)
                    if sweep_id is not None:
                        stepped.add(sweep_id)
            for _ in batch:
                self.inbox.task_done()

    def drain(self, timeout: float) -> bool:
        """Wait until every submitted step ran; False if some are still due after ``timeout``."""
        deadline = time.monotonic() + timeout
        while self.inbox.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self.inbox.unfinished_tasks


_stepper: _Stepper | None = None
_stepper_pid = 0
_stepper_lock = threading.Lock()


def stepper() -> _Stepper:
    """This process's stepper, started on first use (a forked child starts its own)."""
    global _stepper, _stepper_pid
    with _stepper_lock:
        if _stepper is None or _stepper_pid != os.getpid() or not _stepper.is_alive():
            _stepper, _stepper_pid = _Stepper(), os.getpid()
            _stepper.start()
        return _stepper


# What ``admit`` learnt about the jobs this process runs: job id -> its sweep, or None for no trial.
_NOT_SEEN = object()
_trial_sweeps: dict[str, str | None] = {}


def on_job_finished(job_id: str) -> None:
    """The worker's hook at the end of ``run_job``, whatever the job's outcome. Never raises: a
    failure here must not turn a finished job into a failed task (GET heals a missed step).

    The step is handed to this process's stepper and the task returns at once: the next trial is
    already queued (lookahead), so the worker starts it while the step records this one."""
    try:
        stop_watcher(job_id)
        sweep_id = _trial_sweeps.pop(job_id, _NOT_SEEN)
        if sweep_id is None:
            return  # admit found no trial row: nothing to schedule
        stepper().submit(job_id, sweep_id if isinstance(sweep_id, str) else None)
    except Exception:
        log.exception("job %s: sweep scheduling after the trial failed", job_id)


def passed_over(job_id: str) -> None:
    """This process's delivery of ``job_id`` ran another job, whose project's turn it was (see
    worker.fairness): the end hook for ``job_id`` has nothing to record; its job waits for its next
    message."""
    _trial_sweeps[job_id] = None


def flush_steps(timeout: float = 10.0) -> bool:
    """Run the steps still due in this process (worker shutdown, tests)."""
    return _stepper is None or _stepper_pid != os.getpid() or _stepper.drain(timeout)


def _admission_statements() -> tuple[Any, Any, Any]:
    """Built once: the trial row (on Postgres also taking the sweep's admission lock) and the
    conditional admission."""
    columns = [_T.c.id, _T.c.number, _T.c.state, _S.c.status]
    trial = select(*columns).select_from(_T.join(_S, _S.c.id == _T.c.sweep_id))
    trial = trial.where(_T.c.job_id == bindparam("b_job"))
    locked = trial.add_columns(func.pg_advisory_xact_lock(ADMISSION_LOCK, func.hashtext(_T.c.sweep_id)))
    busy = (
        select(func.count())
        .select_from(_T.join(_J, _J.c.id == _T.c.job_id))
        .where(
            _T.c.sweep_id == bindparam("b_sweep"),
            _T.c.state.in_(ADMITTED),
            _T.c.id != bindparam("b_trial"),
            _J.c.status.not_in(FINISHED_STATUSES),
        )
        .scalar_subquery()
    )
    admit_or_defer = (
        update(_T)
        .where(_T.c.id == bindparam("b_trial"), _T.c.state.in_(("queued", "deferred")))
        .values(state=case((busy < bindparam("b_cap"), "running"), else_="deferred"))
        .returning(_T.c.state)
    )
    return trial, locked, admit_or_defer


_ADMISSION = _admission_statements()


def admit_trial(session: Session, job: Job) -> bool:
    """The worker's claim asks this in its transaction, with the job row locked, before the job
    counts as started (``worker.lifecycle``): False when the job is a trial of a sweep that already
    runs ``max_concurrency`` trials. The trial is then ``deferred``, the delivery skipped, and a later
    step sends it again. A job that is no trial costs nothing.

    Two statements: the trial (taking, on Postgres, the sweep's admission lock — an advisory lock,
    not the sweep row's, which a step may hold a while), then its admission, conditional on the
    number of admitted trials whose job has not ended. The second statement's snapshot is taken
    after the lock, so two admissions of one sweep never both see the last free slot. SQLite needs
    no lock: the UPDATE takes its single write lock. An admitted trial of a sweep with a pruner gets
    its watcher."""
    if job.kind != "trial" or job.sweep_id is None:
        _trial_sweeps[job.id] = None
        return True
    trial, locked, admit_or_defer = _ADMISSION
    conn = session.connection()
    row = conn.execute(locked if conn.dialect.name == "postgresql" else trial, {"b_job": job.id}).first()
    if row is None:  # a trial job whose row is gone: let it run
        return True
    trial_id, number, state, sweep_status = row[:4]
    spec = _spec_of(conn, job.sweep_id)[0]
    if state in ("queued", "deferred") and sweep_status == "running":
        new_state = conn.execute(
            admit_or_defer, {"b_trial": trial_id, "b_sweep": job.sweep_id, "b_cap": spec.max_concurrency}
        ).scalar()
        if new_state == "deferred":
            log.info("job %s: sweep %s runs max_concurrency trials; deferred", job.id, job.sweep_id)
            return False
    # Else admitted before (a second delivery, a re-queued attempt), ended, or its sweep ended: the
    # claim decides whether it runs.
    if len(_trial_sweeps) > 10_000:  # jobs that ended without the hook (skipped, lease lost)
        _trial_sweeps.clear()
    _trial_sweeps[job.id] = job.sweep_id
    if spec.pruner.type != "none":
        try:
            start_watcher(job.id, job.sweep_id, trial_id, number, spec)
        except Exception:
            log.exception("job %s: could not start the pruning watcher", job.id)
    return True


def cancel(session: Session, sweep: Sweep) -> None:
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
    sync_trials(session, sweep, spec, None)
    close(session, sweep, spec, "cancelled")


# ----- pruning --------------------------------------------------------------------------------
_watchers: dict[str, PruneWatcher] = {}
_watchers_lock = threading.Lock()


class PruneWatcher(threading.Thread):
    """Reports a running trial's epoch values to the sweep's pruner and stops the trial when told.
    Started by ``admit`` for an admitted trial of a sweep with a pruner."""

    def __init__(self, job_id: str, sweep_id: str, trial_id: int, number: int, spec: SweepSpec) -> None:
        super().__init__(daemon=True, name=f"prune-{job_id[:8]}")
        self.job_id = job_id
        self.sweep_id, self.trial_id, self.number, self.spec = sweep_id, trial_id, number, spec
        self.reported = 0
        self._done = threading.Event()

    def run(self) -> None:
        interval = max(0.2, get_settings().heartbeat_seconds / 2)
        while not self._done.wait(interval):
            try:
                if self.check():
                    return
            except Exception:  # a database blip: the next round tries again
                log.exception("job %s: pruning check failed", self.job_id)

    def check(self) -> bool:
        """One look; True once the trial was pruned or left the running state."""
        with session_scope() as session:
            series = {
                e: v
                for e, v in objective_series(session, self.job_id, self.spec.objective.metric).items()
                if e >= 1
            }
            if len(series) <= self.reported:
                return False
            self.reported = len(series)
            views = load_views(session, self.sweep_id)
            if self.number >= len(views) or views[self.number].state != "running":
                return True
            views[self.number].intermediate = {str(e): v for e, v in series.items()}
            pruner = make_pruner(self.spec)
            study = build_study(self.spec, views, _optuna().samplers.RandomSampler(), pruner)
            trial = study.get_trials(deepcopy=False)[self.number]
            prune = bool(pruner.prune(study, trial))
            # What the pruner remembers (successive halving's rungs) lives in the trial's system attrs.
            attrs = study.get_trials(deepcopy=False)[self.number].system_attrs
            updated = session.execute(
                update(SweepTrial)
                .where(SweepTrial.id == self.trial_id, SweepTrial.state == "running")
                .values(
                    intermediate=json_safe(views[self.number].intermediate),
                    system_attrs=json_safe(dict(attrs)),
                    state="pruning" if prune else "running",
                )
            ).rowcount
            if prune and updated:
                session.execute(
                    update(Job)
                    .where(Job.id == self.job_id, Job.status == "running")
                    .values(cancel_requested=True)
                )
                log.info("job %s: pruned at epoch %d", self.job_id, max(series))
            return prune or not updated

    def stop(self) -> None:
        self._done.set()


def start_watcher(job_id: str, sweep_id: str, trial_id: int, number: int, spec: SweepSpec) -> PruneWatcher:
    watcher = PruneWatcher(job_id, sweep_id, trial_id, number, spec)
    with _watchers_lock:
        old = _watchers.pop(job_id, None)
        _watchers[job_id] = watcher
    if old:
        old.stop()
    watcher.start()
    return watcher


def stop_watcher(job_id: str) -> None:
    with _watchers_lock:
        watcher = _watchers.pop(job_id, None)
    if watcher:
        watcher.stop()


def on_task_postrun(task: Any = None, args: Any = None, **_: Any) -> None:
    if task is not None and task.name == RUN_JOB and args:
        stop_watcher(str(args[0]))


def on_process_shutdown(**_: Any) -> None:
    """A worker process that stops runs the steps it still owes before it exits."""
    if not flush_steps(timeout=10.0):
        log.warning("sweep steps still due at shutdown; the next step or GET /v1/sweeps/{id} runs them")


def connect_signals() -> None:
    from celery.signals import task_postrun, worker_process_shutdown

    task_postrun.connect(on_task_postrun, weak=False)
    worker_process_shutdown.connect(on_process_shutdown, weak=False)


# ----- cross-run findings ---------------------------------------------------------------------
@dataclass
class Run:
    """One complete trial with what the comparisons read."""

    job_id: str
    number: int
    spec: dict[str, Any]
    summary: dict[str, Any]
    verdict: str | None
    value: float | None
    series: dict[str, dict[int, float]] = field(default_factory=dict)
    lambda_max: float | None = None

    def final(self, name: str) -> float | None:
        s = self.series.get(name) or {}
        return s[max(s)] if s else None

    def at_best(self, name: str) -> float | None:
        """The metric at the best checkpoint (model selection on validation), else the last epoch."""
        s = self.series.get(name) or {}
        best = self.summary.get("best_epoch")
        if best is not None and int(best) in s:
            return s[int(best)]
        return self.final(name)

    @property
    def train_loss(self) -> float | None:
        return self.final("train/loss")

    @property
    def val_loss(self) -> float | None:
        return self.summary.get("best_val_loss") or self.final("val/loss")

    @property
    def test_loss(self) -> float | None:
        return self.at_best("test/loss")


def load_runs(session: Session, sweep_id: str) -> list[Run]:
    rows = session.execute(
        select(SweepTrial.number, SweepTrial.value, Job.id, Job.spec, Job.summary, Job.verdict)
        .join(Job, Job.id == SweepTrial.job_id)
        .where(SweepTrial.sweep_id == sweep_id, SweepTrial.state == "complete")
        .order_by(SweepTrial.number)
    ).all()
    runs = {
        job_id: Run(job_id, number, spec, summary or {}, verdict, value)
        for number, value, job_id, spec, summary, verdict in rows
    }
    ids = list(runs)
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        for job_id, name, epoch, value in session.execute(
            select(MetricPoint.job_id, MetricPoint.name, MetricPoint.epoch, MetricPoint.value)
            .where(
                MetricPoint.job_id.in_(chunk), MetricPoint.name.in_(("train/loss", "val/loss", "test/loss"))
            )
            .order_by(MetricPoint.step)
        ):
            runs[job_id].series.setdefault(name, {})[int(epoch)] = value
        # λ_max of the final model: the "final" spectrum, else the newest one.
        newest: dict[str, tuple[int, int]] = {}
        for job_id, step, reason, top in session.execute(
            select(Spectrum.job_id, Spectrum.step, Spectrum.reason, Spectrum.top).where(
                Spectrum.job_id.in_(chunk)
            )
        ):
            rank = (1 if reason == "final" else 0, int(step))
            if top and (job_id not in newest or rank > newest[job_id]):
                newest[job_id] = rank
                runs[job_id].lambda_max = float(top[0])
    return list(runs.values())


def _sibling_key(spec: dict[str, Any], varied: str) -> str:
    """Two runs are siblings for a comparison when their specs agree on everything but ``varied``
    (names and tags never count)."""
    s = copy.deepcopy(spec)
    s.pop("name", None)
    s.pop("tags", None)
    set_path(s, varied, None)
    if varied == "model.hidden" and isinstance(get_path(s, "model.dropout"), list):
        set_path(s, "model.dropout", None)  # per-layer dropout follows the depth
    return _canonical(s)


def _groups(runs: list[Run], varied: str) -> list[list[Run]]:
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(_sibling_key(run.spec, varied), []).append(run)
    out = [g for g in groups.values() if len({_canonical(get_path(r.spec, varied)) for r in g}) >= 2]
    return sorted(out, key=len, reverse=True)[:MAX_GROUPS]


def _table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """At most MAX_TABLE_ROWS rows, evenly spread over the sorted table (a 1,000-trial sweep)."""
    stride = -(-len(rows) // MAX_TABLE_ROWS)
    return rows[::stride] if stride > 1 else rows


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def _clearly_worse(loss: float, reference: float) -> bool:
    return loss - reference > max(WORSE_ABSOLUTE, WORSE_RELATIVE * abs(reference))


def _r(x: float | None, digits: int = 4) -> float | None:
    return None if not _finite(x) else float(f"{x:.{digits}g}")


def _rank_correlation(xs: list[float], ys: list[float]) -> float | None:
    """Spearman's rho without ties handling; None when undefined."""
    import numpy as np

    if len(xs) < 2:
        return None
    rx = np.argsort(np.argsort(xs)).astype(float)
    ry = np.argsort(np.argsort(ys)).astype(float)
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


@dataclass
class TrialNote:
    """A diagnosis a comparison adds to one trial, and the verdict it implies (if any)."""

    job_id: str
    finding: Finding
    verdict: str | None = None


def depth_findings(runs: list[Run], sweep_id: str) -> tuple[list[Finding], list[TrialNote]]:
    """deeper_is_worse: a deeper sibling with clearly higher *training* loss than a shallower one
    cannot be short of capacity (it could copy the shallow net and pass the rest through), so the
    optimizer failed it: its verdict is underfitting.optimization."""
    findings: list[Finding] = []
    notes: list[TrialNote] = []
    pairs: list[dict[str, Any]] = []
    for group in _groups([r for r in runs if _finite(r.train_loss)], "model.hidden"):
        if len({len(get_path(r.spec, "model.hidden") or []) for r in group}) < 2:
            continue  # widths differ, depths do not
        group.sort(key=lambda r: (len(get_path(r.spec, "model.hidden") or []), r.number))
        table = _table(
            [
                {
                    "job_id": r.job_id,
                    "hidden": get_path(r.spec, "model.hidden"),
                    "depth": len(get_path(r.spec, "model.hidden") or []),
                    "train_loss": _r(r.train_loss),
                    "val_loss": _r(r.val_loss),
                    "test_loss": _r(r.test_loss),
                    "verdict": r.verdict,
                }
                for r in group
            ]
        )
        worse_here = []
        for deep in group:
            depth = len(get_path(deep.spec, "model.hidden") or [])
            shallower = [s for s in group if len(get_path(s.spec, "model.hidden") or []) < depth]
            if not shallower:
                continue
            ref = min(shallower, key=lambda s: s.train_loss or math.inf)
            if not _clearly_worse(deep.train_loss or 0.0, ref.train_loss or 0.0):
                continue
            pair = {
                "deeper": {
                    "job_id": deep.job_id,
                    "hidden": get_path(deep.spec, "model.hidden"),
                    "train_loss": _r(deep.train_loss),
                },
                "shallower": {
                    "job_id": ref.job_id,
                    "hidden": get_path(ref.spec, "model.hidden"),
                    "train_loss": _r(ref.train_loss),
                },
            }
            worse_here.append(pair)
            notes.append(_deeper_note(deep, ref, pair, sweep_id))
        pairs += worse_here
        best = min(group, key=lambda r: r.train_loss or math.inf)
        conclusion = (
            f"Deeper is worse: {len(worse_here)} deeper model(s) reach a higher training loss than a shallower "
            "sibling — optimization trouble, not model bias."
            if worse_here
            else f"Training loss does not get worse with depth; the lowest is at depth "
            f"{len(get_path(best.spec, 'model.hidden') or [])} ({_r(best.train_loss)})."
        )
        findings.append(
            Finding(
                code="depth_comparison",
                severity="info",
                confidence=0.9,
                evidence={"table": table},
                recommendation=conclusion,
            )
        )
    if pairs:
        findings.insert(
            0,
            Finding(
                code="deeper_is_worse",
                severity="warning",
                confidence=0.8,
                evidence={"pairs": _table(pairs)},
                recommendation="A deeper model trains worse than a shallower one: that is an optimization problem "
                "(vanishing gradients, saturation, poor initialization), not a lack of capacity. Fix the "
                "optimization of the deep model (normalization, ReLU, a better initialization) or keep the "
                "shallower depth.",
                patch=notes[0].finding.patch,
                trials=sorted({p["deeper"]["job_id"] for p in pairs}),
            ),
        )
    return findings, notes


def _deeper_note(deep: Run, ref: Run, pair: dict[str, Any], sweep_id: str) -> TrialNote:
    activation = get_path(deep.spec, "model.activation")
    patch: dict[str, Any] = {"model": {"norm": "batch"}}
    if activation in ("sigmoid", "tanh"):
        patch["model"]["activation"] = "relu"
    return TrialNote(
        deep.job_id,
        Finding(
            code="deeper_is_worse",
            severity="warning",
            confidence=0.8,
            evidence={
                "sweep_id": sweep_id,
                "train_loss": _r(deep.train_loss),
                "hidden": get_path(deep.spec, "model.hidden"),
                "shallower_job_id": ref.job_id,
                "shallower_hidden": get_path(ref.spec, "model.hidden"),
                "shallower_train_loss": _r(ref.train_loss),
                "alternative_patch": {"model": {"hidden": get_path(ref.spec, "model.hidden")}},
                "pair": pair,
            },
            recommendation=f"This model's training loss ({_r(deep.train_loss)}) is higher than that of its "
            f"shallower sibling {ref.job_id} ({_r(ref.train_loss)}). A deeper net can represent everything the "
            "shallower one can, so the optimizer is at fault: add normalization"
            + (
                " and use ReLU instead of a saturating activation"
                if activation in ("sigmoid", "tanh")
                else ""
            )
            + ", or keep the shallower depth.",
            patch=patch,
        ),
        verdict="underfitting.optimization",
    )


def batch_size_findings(runs: list[Run], sweep_id: str) -> tuple[list[Finding], list[TrialNote]]:
    """batch_size_sharpness: λ_max of the final model, test loss and time per epoch against batch
    size. When larger batches reach sharper minima and also test worse, the sharp trials (sharper and
    worse than the smallest batch) get ``sharp_minimum``."""
    findings: list[Finding] = []
    notes: list[TrialNote] = []
    for group in _groups(runs, "batch_size"):
        group.sort(key=lambda r: (int(get_path(r.spec, "batch_size") or 0), r.number))
        table = _table(
            [
                {
                    "job_id": r.job_id,
                    "batch_size": get_path(r.spec, "batch_size"),
                    "lambda_max": _r(r.lambda_max),
                    "test_loss": _r(r.test_loss),
                    "val_loss": _r(r.val_loss),
                    "train_loss": _r(r.train_loss),
                    "seconds_per_epoch": _r(r.summary.get("seconds_per_epoch")),
                    "ms_per_update": _r(r.summary.get("ms_per_update")),
                }
                for r in group
            ]
        )
        measured = [r for r in group if _finite(r.lambda_max) and _finite(r.test_loss)]
        sizes = [float(get_path(r.spec, "batch_size")) for r in measured]
        rho_sharp = _rank_correlation(sizes, [r.lambda_max or 0.0 for r in measured])
        rho_test = _rank_correlation(sizes, [r.test_loss or 0.0 for r in measured])
        small, large = group[0], group[-1]
        t_small, t_large = small.summary.get("seconds_per_epoch"), large.summary.get("seconds_per_epoch")
        speedup = t_small / t_large if _finite(t_small) and _finite(t_large) and t_large else None
        evidence = {
            "table": table,
            "rank_correlation": {"lambda_max": _r(rho_sharp), "test_loss": _r(rho_test)},
            "epoch_speedup_largest_vs_smallest": _r(speedup),
        }
        sharp: list[Run] = []
        if (
            measured
            and rho_sharp is not None
            and rho_test is not None
            and rho_sharp >= 0.5
            and rho_test >= 0.5
        ):
            ref = measured[0]  # the smallest batch with a spectrum
            sharp = [
                r
                for r in measured[1:]
                if get_path(r.spec, "batch_size") > get_path(ref.spec, "batch_size")
                and (r.lambda_max or 0.0) > 1.2 * (ref.lambda_max or 0.0)
                and _clearly_worse(r.test_loss or 0.0, ref.test_loss or 0.0)
            ]
        trade = (
            f" An epoch at batch {get_path(large.spec, 'batch_size')} takes {1 / speedup:.2g}× the time of batch "
            f"{get_path(small.spec, 'batch_size')}."
            if speedup
            else ""
        )
        if sharp:
            ref = measured[0]
            findings.append(
                Finding(
                    code="batch_size_sharpness",
                    severity="warning",
                    confidence=0.8,
                    evidence=evidence,
                    recommendation=f"Larger batches reach sharper minima (λ_max {_r(ref.lambda_max)} at batch "
                    f"{get_path(ref.spec, 'batch_size')} → up to {_r(max(r.lambda_max or 0.0 for r in sharp))}) "
                    "and generalize worse (test loss "
                    f"{_r(ref.test_loss)} → up to {_r(max(r.test_loss or 0.0 for r in sharp))}). Prefer the "
                    f"smaller batch, or make up for a large one (warm-up, noise, a higher rate).{trade}",
                    patch={"batch_size": get_path(ref.spec, "batch_size")},
                    trials=[r.job_id for r in sharp],
                )
            )
            notes += [_sharp_note(r, ref, sweep_id) for r in sharp]
        conclusion = (
            "Larger batches reached sharper minima and tested worse." + trade
            if sharp
            else "No sharpness penalty for larger batches in these runs." + trade
        )
        findings.append(
            Finding(
                code="batch_size_comparison",
                severity="info",
                confidence=0.9,
                evidence=evidence,
                recommendation=conclusion,
            )
        )
    return findings, notes


def _sharp_note(r: Run, ref: Run, sweep_id: str) -> TrialNote:
    return TrialNote(
        r.job_id,
        Finding(
            code="sharp_minimum",
            severity="warning",
            confidence=0.8,
            evidence={
                "sweep_id": sweep_id,
                "batch_size": get_path(r.spec, "batch_size"),
                "lambda_max": _r(r.lambda_max),
                "test_loss": _r(r.test_loss),
                "reference": {
                    "job_id": ref.job_id,
                    "batch_size": get_path(ref.spec, "batch_size"),
                    "lambda_max": _r(ref.lambda_max),
                    "test_loss": _r(ref.test_loss),
                },
            },
            recommendation=f"At batch size {get_path(r.spec, 'batch_size')} training ended in a sharper minimum "
            f"(λ_max {_r(r.lambda_max)}) than at batch size {get_path(ref.spec, 'batch_size')} "
            f"(λ_max {_r(ref.lambda_max)}), and its test loss is worse. Use the smaller batch.",
            patch={"batch_size": get_path(ref.spec, "batch_size")},
        ),
    )


def learning_rate_findings(runs: list[Run]) -> list[Finding]:
    """learning_rate_range: loss against rate; the usable range is the rates whose best validation
    loss is within 10% of the best one, and the rates that diverged bound it from above."""
    findings = []
    for group in _groups(runs, "optimizer.lr"):
        group.sort(key=lambda r: float(get_path(r.spec, "optimizer.lr")))
        table = _table(
            [
                {
                    "job_id": r.job_id,
                    "lr": get_path(r.spec, "optimizer.lr"),
                    "train_loss": _r(r.train_loss),
                    "val_loss": _r(r.val_loss),
                    "verdict": r.verdict,
                }
                for r in group
            ]
        )
        ok = [r for r in group if _finite(r.val_loss) and r.verdict != "diverged"]
        ok_ids = {r.job_id for r in ok}
        diverged = [float(get_path(r.spec, "optimizer.lr")) for r in group if r.job_id not in ok_ids]
        if not ok:
            conclusion, usable, best_lr = "Every rate diverged or lost its validation loss.", None, None
        else:
            best = min(ok, key=lambda r: r.val_loss or math.inf)
            best_lr = float(get_path(best.spec, "optimizer.lr"))
            good = [
                float(get_path(r.spec, "optimizer.lr"))
                for r in ok
                if (r.val_loss or math.inf) <= 1.1 * (best.val_loss or 0.0) + 1e-12
            ]
            usable = [min(good), max(good)]
            conclusion = f"Best rate {best_lr:g} (validation loss {_r(best.val_loss)}); rates from {usable[0]:g} to {usable[1]:g} come within 10% of it."
            if diverged:
                conclusion += f" Diverged at {min(diverged):g} and above."
        findings.append(
            Finding(
                code="learning_rate_range",
                severity="info",
                confidence=0.9,
                evidence={
                    "table": table,
                    "best_lr": best_lr,
                    "usable_range": usable,
                    "diverged_lrs": diverged,
                },
                recommendation=conclusion,
            )
        )
    return findings


def cross_run_findings(session: Session, sweep: Sweep, spec: SweepSpec) -> list[dict[str, Any]]:
    runs = load_runs(session, sweep.id)
    depth, depth_notes = depth_findings(runs, sweep.id)
    batch, batch_notes = batch_size_findings(runs, sweep.id)
    apply_notes(session, sweep.id, [r.job_id for r in runs], depth_notes + batch_notes)
    return [f.to_dict() for f in depth + batch + learning_rate_findings(runs)]


def apply_notes(session: Session, sweep_id: str, job_ids: list[str], notes: list[TrialNote]) -> None:
    """Write the comparisons' diagnoses on the trials (replacing this sweep's earlier ones), and the
    verdict they imply. The verdict row that the single-run engine wrote is replaced, keeping what it
    said as ``previous_verdict``, so a job's verdict and its verdict row always agree."""
    old = session.execute(
        select(Diagnosis.id, Diagnosis.evidence).where(
            Diagnosis.job_id.in_(job_ids), Diagnosis.code.in_(("deeper_is_worse", "sharp_minimum"))
        )
    ).all()
    stale = [i for i, evidence in old if (evidence or {}).get("sweep_id") == sweep_id]
    if stale:
        session.execute(delete(Diagnosis).where(Diagnosis.id.in_(stale)))
    for note in notes:
        write_diagnoses(session, note.job_id, [note.finding], replace=False)
        if note.verdict:
            set_verdict(session, note)


def set_verdict(session: Session, note: TrialNote) -> None:
    job = session.get(Job, note.job_id)
    if job is None or job.verdict in (note.verdict, "diverged"):  # divergence is the more specific story
        return
    session.execute(delete(Diagnosis).where(Diagnosis.job_id == job.id, Diagnosis.kind == "verdict"))
    finding = note.finding
    verdict = Finding(
        code=note.verdict,
        severity="warning",
        confidence=finding.confidence,
        evidence={"previous_verdict": job.verdict, "causes": [finding.code], **finding.evidence},
        recommendation=finding.recommendation,
        patch=finding.patch,
        kind="verdict",
    )
    write_diagnoses(session, job.id, [verdict], replace=False)
    job.verdict = note.verdict
