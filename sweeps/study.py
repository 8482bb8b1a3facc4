"""The Optuna bridge: an in-memory study rebuilt from the trial rows at each step, asked for new
points or for a pruning decision, then dropped (no Optuna storage; see ``sweeps``)."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from sqlalchemy import select
from sqlalchemy.orm import Session

from models.jsonsafe import json_safe
from models.tables import SweepTrial
from sweeps.spec import Dim, SweepSpec, canonical

# Once per process: setLevel clears every logger's cache, a millisecond each time.
optuna.logging.set_verbosity(optuna.logging.WARNING)


def distribution(dim: Dim) -> BaseDistribution:
    if dim.type == "choice":
        # Optuna's categorical choices must be scalars; model.hidden choices are lists, so the
        # sampler sees the index and the trial row keeps the value.
        return CategoricalDistribution(list(range(len(dim.values or []))))
    if dim.type == "int":
        return IntDistribution(int(dim.low or 0), int(dim.high or 0), log=dim.log, step=int(dim.step or 1))
    return FloatDistribution(
        float(dim.low or 0), float(dim.high or 0), log=dim.type == "loguniform", step=dim.step
    )


def to_internal(dim: Dim, value: Any) -> Any:
    """A value of the space as the sampler sees it (a choice by its index)."""
    if dim.type == "choice":
        keys = [canonical(v) for v in dim.values or []]
        return keys.index(canonical(value))
    return int(value) if dim.type == "int" else float(value)


def from_internal(dim: Dim, value: Any) -> Any:
    if dim.type == "choice":
        return copy.deepcopy((dim.values or [])[int(value)])
    return int(value) if dim.type == "int" else float(value)


@dataclass
class TrialView:
    """What the study needs of one trial row."""

    number: int
    params: dict[str, Any]
    state: str
    value: float | None
    intermediate: dict[str, Any]
    system_attrs: dict[str, Any]


def load_views(session: Session, *, sweep_id: str) -> list[TrialView]:
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
    return {path: distribution(dim) for path, dim in spec.space.items()}


def make_sampler(spec: SweepSpec, seed: int, n_existing: int) -> Any:
    samplers = optuna.samplers
    if spec.algorithm == "grid":
        # GridSampler shuffles the grid with its seed and gives trial k the k-th point, so the seed
        # must stay the same at every rebuild of the study.
        space = {path: [to_internal(dim, v) for v in dim.grid() or []] for path, dim in spec.space.items()}
        return samplers.GridSampler(space, seed=seed)
    # A fresh sampler per step: with the same seed every step would draw the same first point.
    if spec.algorithm == "tpe":
        return samplers.TPESampler(seed=seed + n_existing)
    return samplers.RandomSampler(seed=seed + n_existing)


def make_pruner(spec: SweepSpec) -> Any:
    pruners = optuna.pruners
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
                    p: dists[p].to_external_repr(to_internal(spec.space[p], v))
                    for p, v in view.params.items()
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
            p: from_internal(spec.space[p], dists[p].to_internal_repr(v)) for p, v in trial.params.items()
        }
        out.append((params, json_safe(dict(frozen.system_attrs))))
    return out


def judge(spec: SweepSpec, views: list[TrialView], number: int) -> tuple[bool, dict[str, Any]]:
    """The pruner's decision on trial ``number`` (its epoch values already in ``views``), and what
    the pruner remembers of it (successive halving's rungs), to keep in the trial's system attrs."""
    pruner = make_pruner(spec)
    study = build_study(spec, views, optuna.samplers.RandomSampler(), pruner)
    prune = bool(pruner.prune(study, study.get_trials(deepcopy=False)[number]))
    attrs = study.get_trials(deepcopy=False)[number].system_attrs
    return prune, json_safe(dict(attrs))
