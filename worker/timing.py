"""The batch-size timing study: time per update, per epoch and samples per second against batch size,
on the worker's own device, with the job's own model and data.

``measure_batch_sizes`` is the measurement (no services; tests call it directly). ``run_study`` is
what the Celery task runs: it claims the study's Job row (``kind = "study"``), measures, and stores the
curve in the row's ``summary["batch_size_timing"]``, so ``GET /v1/jobs/{id}`` shows it.

What is timed: the training pass of each epoch only (``Trainer.train_epoch``: every update with the
engine's per-step bookkeeping), ended by a device synchronization. Evaluation is constant per epoch
and would blur the curve, so it runs once afterwards, untimed, to report the losses reached. Before
anything is timed, one epoch at the largest batch size (the fewest updates) pays the one-off costs
(kernel selection, allocator growth, CUDA context), so the first measured size does not carry them;
where updates run as CUDA graphs, each size also trains one untimed epoch first, which captures them.
Each size reports the median over its epochs; the raw epoch times come along.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from sqlalchemy import select

from models.db import session_scope
from models.jsonsafe import json_safe
from models.spec import JobSpec
from models.summary import RunSummary
from models.tables import Job
from worker.celery_app import BATCH_TIMING_TASK  # noqa: F401  (the task's one name, shared with the API)
from worker.data import Prepared
from worker.failures import describe_failure
from worker.jobdata import prepare_data
from worker.lifecycle import Claim, Heartbeat, LeaseLost, fenced_update, finish, run_claimed
from worker.recorders import MemoryRecorder
from worker.runner import configure_torch
from worker.training import StopTraining, Trainer, resolve_device

log = logging.getLogger("saddle.worker")

StopCheck = Callable[[], str | None]


class StudyRecorder(MemoryRecorder):
    """Keeps nothing it does not need, and turns the heartbeat's reason into a stop between steps."""

    def __init__(self, stop: StopCheck | None = None) -> None:
        super().__init__()
        self._check = stop

    def stop_reason(self) -> str | None:
        return self._check() if self._check else None


def timing_spec(base: JobSpec, batch_size: int, epochs: int) -> JobSpec:
    """The base spec at one batch size: no curriculum (every epoch sees the whole training split), no
    Hessian, and a warm-up that fits in the study's epochs."""
    payload = base.model_dump(mode="json")
    payload |= {"batch_size": batch_size, "epochs": epochs, "curriculum": []}
    payload["analysis"]["hessian"]["enabled"] = False
    payload["schedule"]["warmup_epochs"] = min(payload["schedule"]["warmup_epochs"], epochs / 2)
    return JobSpec.model_validate(payload)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_epochs(trainer: Trainer, epochs: int) -> list[float]:
    seconds = []
    for epoch in range(epochs):
        _sync(trainer.device)
        start = time.perf_counter()
        trainer.train_epoch(epoch)
        _sync(trainer.device)
        seconds.append(time.perf_counter() - start)
    return seconds


def measure_one(
    base: JobSpec, data: Prepared, batch_size: int, epochs: int, device: torch.device, stop: StopCheck | None
) -> dict[str, Any]:
    trainer = Trainer(timing_spec(base, batch_size, epochs), data, StudyRecorder(stop), device)
    n = len(trainer.train_y)
    updates = -(-n // batch_size)
    if trainer.graphs is not None:  # capturing the update's CUDA graphs is a one-off: not timed
        time_epochs(trainer, 1)
    epoch_seconds = time_epochs(trainer, epochs)
    median = statistics.median(epoch_seconds)
    metrics = trainer.evaluate()
    return {
        "batch_size": batch_size,
        "effective_batch_size": min(batch_size, n),
        "updates_per_epoch": updates,
        "epochs": epochs,
        "seconds_per_epoch": median,
        "ms_per_update": 1000 * median / updates,
        "samples_per_second": n / median if median > 0 else None,
        "epoch_seconds": epoch_seconds,
        "train_loss": metrics.get("train/loss"),
        "val_loss": metrics.get("val/loss"),
    }


def measure_batch_sizes(
    base: JobSpec,
    data: Prepared,
    batch_sizes: list[int],
    epochs: int,
    device: torch.device,
    stop: StopCheck | None = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per batch size (ascending), each from a fresh model with the spec's seed."""
    sizes = sorted(set(batch_sizes))
    warm = Trainer(timing_spec(base, sizes[-1], 1), data, StudyRecorder(stop), device)
    time_epochs(warm, 1)  # untimed: pays the one-off costs (see the module docstring)
    rows = []
    for size in sizes:
        rows.append(measure_one(base, data, size, epochs, device, stop))
        if on_result:
            on_result(rows[-1])
    return rows


# ----- the study as a job ----------------------------------------------------------------------
def study_parameters(job_id: str) -> dict[str, Any]:
    """The study's batch sizes and epochs, written into the row's summary by the API."""
    with session_scope() as session:
        stored = session.scalar(select(Job.summary).where(Job.id == job_id))
    return RunSummary.of(stored).study or {}


def run_study(job_id: str) -> str:
    """Run a batch-size timing study to its end; returns the final status ('skipped' if not ours)."""
    return run_claimed(job_id, _configured_measure)


def _configured_measure(job_claim: Claim, heartbeat: Heartbeat) -> str:
    configure_torch(job_claim.spec)
    return _measure_and_finish(job_claim, heartbeat)


def _measure_and_finish(job_claim: Claim, heartbeat: Heartbeat) -> str:
    spec = job_claim.spec
    params = study_parameters(job_claim.job_id)
    sizes, epochs = list(params["batch_sizes"]), int(params["epochs"])
    try:
        device = resolve_device(spec.resources.device)
        data = prepare_data(spec, job_claim.project_id)
        with session_scope() as session:
            fenced_update(session, job_claim, device=str(device))
        rows = measure_batch_sizes(
            spec, data, sizes, epochs, device, lambda: heartbeat.reason, _progress(job_claim, len(sizes))
        )
    except StopTraining as stop:
        if stop.reason.startswith("lease lost"):
            raise LeaseLost(stop.reason) from None
        status = "cancelled" if stop.reason == "cancelled" else "failed"
        finish(job_claim, status, error="cancelled by request" if status == "cancelled" else stop.reason)
        return status
    except Exception as exc:
        log.exception("study %s failed", job_claim.job_id)
        finish(job_claim, "failed", error=describe_failure(exc, "the batch-size timing study"))
        return "failed"
    summary = RunSummary(study=params, device=str(device), data=data.info, batch_size_timing=rows)
    finish(job_claim, "succeeded", summary=summary)
    return "succeeded"


def _progress(job_claim: Claim, total: int) -> Callable[[dict[str, Any]], None]:
    done: list[dict[str, Any]] = []

    def write(row: dict[str, Any]) -> None:
        done.append(row)
        progress = {"done": len(done), "total": total, "fraction": len(done) / total, "last": row}
        with session_scope() as session:
            fenced_update(session, job_claim, progress=json_safe(progress))

    return write
