"""Hessian spectra of a running job, stored with the job (see worker.hessian for the mathematics).

Spectra are taken every ``analysis.hessian.every_epochs``, at the end, and at the best checkpoint,
on a fixed random subset of ``analysis.hessian.samples`` training rows, so spectra of one job compare
across epochs.
"""

from __future__ import annotations

import copy
import io
import logging
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from sqlalchemy import select

from models.artifacts import get_store, key_for_escape_direction
from models.db import session_scope, with_retries
from models.jsonsafe import json_safe
from models.tables import Checkpoint, Job, Spectrum
from worker.hessian import classify_critical_point, spectrum
from worker.lifecycle import Claim, fenced_update
from worker.training import Trainer, load_checkpoint

log = logging.getLogger("saddle.worker")

BATCH = 1024
GRADIENT_ROWS_PER_SAMPLE = 8
# The exact spectrum costs one HVP per parameter; Lanczos reaches 1e-4 relative accuracy in tens of
# HVPs. During training the exact path is kept for models small enough that n HVPs stay cheap.
EXACT_THRESHOLD = 1000


def analysis_batches(trainer: Trainer, samples: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    n = len(trainer.train_y)
    rows = np.arange(n)
    if samples < n:
        rows = np.sort(np.random.default_rng(trainer.spec.seed + 7).choice(n, samples, replace=False))
    index = torch.as_tensor(rows, device=trainer.device)
    X, y = trainer.train_X[index], trainer.train_y[index]
    return [(X[i : i + BATCH], y[i : i + BATCH]) for i in range(0, len(y), BATCH)]


def measure(
    trainer: Trainer, model: torch.nn.Module, settings: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One spectrum of ``model`` on the job's analysis sample; returns the row's fields."""
    h = trainer.spec.analysis.hessian.model_copy(update=settings or {})
    batches = analysis_batches(trainer, h.samples)
    result = spectrum(
        model,
        trainer.data_loss,
        batches,
        top_k=h.top_k,
        bottom_k=h.bottom_k,
        trace=h.trace,
        density=h.density,
        seed=trainer.spec.seed,
        exact_threshold=EXACT_THRESHOLD,
    )
    lr = trainer.optimizer.param_groups[0]["lr"]
    loss, grad_norm = gradient_on(
        model, trainer, analysis_batches(trainer, GRADIENT_ROWS_PER_SAMPLE * h.samples)
    )
    critical = classify_critical_point(replace(result, loss=loss, grad_norm=grad_norm), lr=lr)
    return {"result": result, "critical": critical, "samples": sum(len(b[1]) for b in batches)}


def gradient_on(
    model: torch.nn.Module, trainer: Trainer, batches: list[tuple[torch.Tensor, torch.Tensor]]
) -> tuple[float, float]:
    """Mean loss and gradient norm over ``batches`` in eval mode (the spectrum's mode). The
    critical-point test asks whether the gradient is zero; on the Hessian's sample it carries
    sampling noise that the full gradient does not (a point where the full gradient vanishes shows
    a sample gradient of order sqrt(variance / samples)), so it is measured on GRADIENT_ROWS_PER_SAMPLE
    times as many rows, all of them up to that."""
    params = [p for p in model.parameters() if p.requires_grad]
    was_training = model.training
    model.eval()
    total = sum(len(y) for _, y in batches)
    grads = [torch.zeros_like(p) for p in params]
    loss_sum = 0.0
    try:
        with torch.enable_grad():
            for X, y in batches:
                loss = trainer.data_loss(model(X), y) * (len(y) / total)
                for acc, g in zip(grads, torch.autograd.grad(loss, params, allow_unused=True), strict=True):
                    if g is not None:
                        acc.add_(g)
                loss_sum += float(loss.detach())
    finally:
        model.train(was_training)
    return loss_sum, float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)))


def spectrum_fields(measured: dict[str, Any]) -> dict[str, Any]:
    """The stored columns of a measured spectrum (also what in-memory runs keep)."""
    result = measured["result"]
    return {
        "method": result.method,
        "samples": measured["samples"],
        "hvps": result.hvps,
        "seconds": result.seconds,
        # A spectrum at a diverged point holds NaN: JSON keeps it as null, the columns as NaN.
        "top": json_safe([float(v) for v in result.top]),
        "bottom": json_safe([float(v) for v in result.bottom]),
        "trace": _float_or_none(result.trace),
        "trace_stderr": _float_or_none(result.trace_stderr),
        "grad_norm": float(result.grad_norm),
        "hg_norm": _float_or_none(result.hg_norm),
        "critical_point": json_safe(measured["critical"]),
        "density": json_safe(result.density),
    }


def store(
    job_id: str,
    claim: Claim | None,
    epoch: int,
    step: int,
    reason: str,
    measured: dict[str, Any],
    checkpoint_id: int | None = None,
) -> int:
    """Insert the spectrum row (and its escape direction); fenced when a training attempt writes it."""
    result = measured["result"]
    row_id: list[int] = []

    def transaction() -> None:
        with session_scope() as session:
            if claim is not None:
                fenced_update(session, claim)
            row = Spectrum(
                job_id=job_id,
                checkpoint_id=checkpoint_id,
                epoch=epoch,
                step=step,
                reason=reason,
                **spectrum_fields(measured),
            )
            session.add(row)
            session.flush()
            if result.escape_direction is not None:
                key = key_for_escape_direction(job_id, row.id)
                buffer = io.BytesIO()
                torch.save(torch.as_tensor(result.escape_direction).float().cpu(), buffer)
                get_store().put_bytes(key, buffer.getvalue())
                row.escape_artifact = key
            row_id[:] = [row.id]

    with_retries(transaction)
    return row_id[0]


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def record_spectrum(claim: Claim, trainer: Trainer, epoch: int, reason: str) -> None:
    store(claim.job_id, claim, epoch, trainer.state.step, reason, measure(trainer, trainer.model))
    if reason == "final":
        record_best(claim, trainer)


def record_best(claim: Claim, trainer: Trainer) -> None:
    """At the end, also measure the best checkpoint (the weights a user would deploy)."""
    with session_scope() as session:
        best = session.scalars(
            select(Checkpoint).where(Checkpoint.job_id == claim.job_id, Checkpoint.kind == "best")
        ).one_or_none()
    if best is None or best.epoch == trainer.state.epoch:
        return
    model = copy.deepcopy(trainer.model)
    model.load_state_dict(load_checkpoint(get_store().get_bytes(best.artifact))["model"])
    store(claim.job_id, claim, best.epoch, best.step, "best", measure(trainer, model), checkpoint_id=best.id)


def on_demand_spectrum(job_id: str, checkpoint_id: int, settings: dict[str, Any]) -> int:
    """A spectrum of a stored checkpoint with other settings (POST .../checkpoints/{id}/spectrum).
    The API answered 202; if the spectrum fails, the failure goes where training-time ones go,
    ``summary.analysis_errors`` of the job, instead of only into this worker's log."""
    try:
        return _on_demand_spectrum(job_id, checkpoint_id, settings)
    except Exception as exc:
        log.exception("job %s: on-demand spectrum of checkpoint %s failed", job_id, checkpoint_id)
        note = f"on-demand spectrum of checkpoint {checkpoint_id}: {type(exc).__name__}: {exc}"
        with session_scope() as session:
            job = session.get(Job, job_id, with_for_update=True)
            if job is not None:
                summary = dict(job.summary or {})
                summary["analysis_errors"] = [*summary.get("analysis_errors", []), note.splitlines()[0]]
                job.summary = summary
        return -1


def _on_demand_spectrum(job_id: str, checkpoint_id: int, settings: dict[str, Any]) -> int:
    from models.spec import JobSpec
    from worker.recorders import MemoryRecorder
    from worker.runner import prepare_data
    from worker.training import resolve_device

    with session_scope() as session:
        job = session.get(Job, job_id)
        ckpt = session.get(Checkpoint, checkpoint_id)
        if job is None or ckpt is None or ckpt.job_id != job_id:
            raise LookupError(f"checkpoint {checkpoint_id} of job {job_id} not found")
        spec, project_id, artifact, epoch, step = (
            JobSpec.model_validate(job.spec),
            job.project_id,
            ckpt.artifact,
            ckpt.epoch,
            ckpt.step,
        )
    trainer = Trainer(
        spec, prepare_data(spec, project_id), MemoryRecorder(), resolve_device(spec.resources.device)
    )
    trainer.model.load_state_dict(load_checkpoint(get_store().get_bytes(artifact))["model"])
    return store(
        job_id, None, epoch, step, "on_demand", measure(trainer, trainer.model, settings), checkpoint_id
    )
