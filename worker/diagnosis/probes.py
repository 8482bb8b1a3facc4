"""Probe runs: settle model bias against optimization trouble by experiment, inside the job.

When the rules find the training loss large, two short sibling trainings run in the worker before
the verdict is written (``analysis.probes``, on by default):
    ``tuned_optimizer``  the *same* model with a standard recipe: Adam at 3e-3, standardized
                         features, shuffled rows, the default initialization;
    ``larger_model``     twice the width and one more layer, ReLU, with the same recipe.
Each trains on at most ``MAX_ROWS`` of the job's training rows and stops when it has spent an eighth
of the job's own training compute (or after 4x the job's epochs), so both together cost at most a
quarter of the job. Compute is counted, not timed (``compute``): the same job gets the same probes,
and so the same verdict, on a busy machine and on an idle one. Its loss is then measured on all of
the job's training rows (and its validation rows) and compared with the job's by
``rules.probe_outcome``.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any

import numpy as np
import torch

from models.patch import merge_patch
from models.spec import JobSpec
from worker.data import Prepared, Scaler
from worker.diagnosis.evidence import Evidence
from worker.diagnosis.recipes import probe_patches
from worker.diagnosis.rules import facts, linear_regression_unvouched, underfit_evidence
from worker.recorders import MemoryRecorder
from worker.training import StopTraining, Trainer

MAX_ROWS = 2048
SHARE_PER_PROBE = 0.125  # of the job's compute; two probes: a quarter
CPU = torch.device("cpu")
MAX_EPOCH_FACTOR = 4  # a probe never trains longer than 4x the job's epochs
QUIET = {
    "analysis": {"hessian": {"enabled": False}, "diagnostics": False},
    "curriculum": [],
    "checkpoints": {"every_epochs": 10_000, "keep_best": False},
}


# What an update costs whatever the model's size (kernel launches, autograd and optimizer
# bookkeeping), in parameter-row passes: ~0.3 ms an update below 10^4 parameters against ~1e-10 s a
# parameter-row pass at 10^6 (one CPU thread, batch 32, torch 2.13). Without it a linear model's job
# counted as almost no compute and its larger-model probe got 0-5 epochs (benchmarks/diagnosis).
UPDATE_OVERHEAD = 3.0e6


def compute(n_params: int, updates: int, batch_size: int, epochs: int, rows_evaluated: int) -> float:
    """Training compute in parameter-row passes: an update is a forward and a backward pass over its
    batch (about three forward passes) plus its fixed cost (``UPDATE_OVERHEAD``), and every epoch
    evaluates ``rows_evaluated`` rows once."""
    passes = float(n_params) * (3.0 * updates * batch_size + float(epochs) * rows_evaluated)
    return passes + UPDATE_OVERHEAD * updates


def job_compute(ev: Evidence) -> float:
    """The job's own training compute (its updates and per-epoch evaluations; spectra not counted)."""
    data = ev.summary.get("data") or {}
    rows = sum(int(data.get(k) or 0) for k in ("n_train", "n_val", "n_test"))
    steps = int(ev.summary.get("steps") or 0)
    return compute(int(ev.summary.get("n_parameters") or 0), steps, ev.spec.batch_size, ev.epochs_run, rows)


def wanted(ev: Evidence) -> bool:
    """Probes run for a finished, finite run whose training loss the rules find large, and for a
    linear regression that leaves a material share of the target's variance unexplained
    (``rules.linear_regression_unvouched``: only the larger model can say whether that is bias)."""
    if not ev.spec.analysis.probes or ev.summary.get("diverged_step") is not None:
        return False
    if ev.spec.init_from is not None or ev.spec.curriculum:
        return False  # a fine-tune or a curriculum is not retrained from scratch by a probe
    if not math.isfinite(ev.final("train/loss")):
        return False
    f = facts(ev)
    return underfit_evidence(ev, f) is not None or linear_regression_unvouched(ev, f)


def run_probes(
    spec: JobSpec, data: Prepared, ev: Evidence, device: torch.device = CPU
) -> dict[str, Any] | None:
    """Run the probes the evidence calls for (on the job's device); None when none are wanted."""
    if not wanted(ev):
        return None
    budget = SHARE_PER_PROBE * job_compute(ev)
    runs = {what: probe(spec, data, patch, budget, device) for what, patch in probe_patches(spec).items()}
    return {
        "parent_train_loss": ev.final("train/loss"),
        "budget": f"each probe at most {SHARE_PER_PROBE:.1%} of the job's training compute",
        "runs": runs,
    }


class ComputeBudget(MemoryRecorder):
    """Stops a probe's training once it has spent its share of the job's compute (checked before
    every update)."""

    def __init__(self, budget: float) -> None:
        super().__init__()
        self.budget = budget
        self.trainer: Trainer | None = None

    def spent(self) -> float:
        t = self.trainer
        if t is None:
            return 0.0
        return compute(t.n_params, t.state.step, t.spec.batch_size, t.state.epoch, len(t.train_y))

    def stop_reason(self) -> str | None:
        return "probe budget spent" if self.spent() >= self.budget else None


def probe(
    spec: JobSpec, data: Prepared, patch: dict[str, Any], budget: float, device: torch.device = CPU
) -> dict[str, Any]:
    """One probe, stopped once it has spent ``budget`` (``compute``); its loss on all training rows
    and on the validation rows."""
    probe_spec = JobSpec.model_validate(
        merge_patch(merge_patch(spec.model_dump(mode="json"), patch), QUIET)
        | {"epochs": MAX_EPOCH_FACTOR * spec.epochs}
    )
    rows = _subset(len(data.y_train), spec.seed)
    scaler = _standardizer(data.X_train[rows])
    recorder = ComputeBudget(budget)
    trainer = Trainer(probe_spec, _training_rows(data, rows, scaler), recorder, device)
    recorder.trainer = trainer
    start = time.monotonic()
    with contextlib.suppress(StopTraining):  # the budget is spent: measure the model as it is
        trainer.fit()
    out: dict[str, Any] = {
        "patch": patch,
        "rows": len(rows),
        "parameters": trainer.n_params,
        "epochs": trainer.state.epoch,
        "updates": trainer.state.step,
        "seconds": round(time.monotonic() - start, 3),
        "compute": recorder.spent(),
        "budget_compute": budget,
    }
    if trainer.state.diverged_step is not None:
        return out | {"train_loss": None, "diverged": True}
    out["train_loss"] = _loss_on(trainer, scaler.apply(data.X_train), data.y_train)
    if len(data.y_val):
        out["val_loss"] = _loss_on(trainer, scaler.apply(data.X_val), data.y_val)
    return out


def _subset(n: int, seed: int) -> np.ndarray:
    if n <= MAX_ROWS:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed + 17).choice(n, MAX_ROWS, replace=False))


def _standardizer(X: np.ndarray) -> Scaler:
    # Standardizing rows that already went through the job's (affine) scaling equals standardizing
    # the raw features: the recipe's scaling, without going back to the raw data.
    std = X.std(axis=0)
    return Scaler("standardize", X.mean(axis=0), np.where(std > 1e-12, std, 1.0).astype(np.float32))


def _training_rows(data: Prepared, rows: np.ndarray, scaler: Scaler) -> Prepared:
    """The probe's data: the chosen training rows, standardized; no validation or test rows."""
    empty_X, empty_y = data.X_train[:0], data.y_train[:0]
    return Prepared(
        scaler.apply(data.X_train[rows]), data.y_train[rows], empty_X, empty_y, empty_X, empty_y,
        data.task, data.data_task, data.n_classes, data.n_outputs, scaler, data.input_shape, dict(data.info),
    )  # fmt: skip


@torch.no_grad()
def _loss_on(trainer: Trainer, X: np.ndarray, y: np.ndarray) -> float:
    trainer.model.eval()
    loss, _ = trainer._split_sums("probe", trainer._tensor(X), trainer._target(y), {})
    return float(loss) / len(y)
