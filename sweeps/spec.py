"""What a sweep is: the request (``POST /v1/sweeps``, stored as the sweep's config), its states and
limits, and the per-process cache of stored requests (a sweep's config never changes).

Pydantic only: the API validates sweeps with this module without loading Optuna or torch."""

from __future__ import annotations

import json
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import Connection, select

from models.spec import JobSpec
from models.tables import Sweep

MAX_TRIALS = 10_000
MAX_GRID_POINTS = 10_000
# queued: launched, its message is in the broker; deferred: a worker took it while the sweep had
# max_concurrency trials running, so it waits for a step to send it again; running: admitted (its job
# may be running); pruning: told to stop, its job has not ended yet.
ADMITTED = ("running", "pruning")
ACTIVE = ("queued", "deferred", *ADMITTED)  # not finished yet
TRIAL_STATES = (*ACTIVE, "complete", "pruned", "failed", "cancelled")
SWEEP_STATUSES = ("running", "succeeded", "failed", "cancelled")


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


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


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


def spec_of(conn: Connection, *, sweep_id: str) -> tuple[SweepSpec, int]:
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
