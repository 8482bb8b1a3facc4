"""Hessian spectra of a trainer's model (see worker.hessian for the mathematics): measured on a fixed
random subset of ``analysis.hessian.samples`` training rows, so spectra of one job compare across
epochs, with the critical-point test on a gradient over more rows. ``worker.spectra`` stores them
with the job; in-memory runs (``worker.recorders``) keep them as they are.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from models.jsonsafe import json_safe
from models.spectrum import SpectrumRecord
from worker.hessian import classify_critical_point, spectrum
from worker.training import Trainer

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


def spectrum_record(
    measured: dict[str, Any], epoch: int, step: int, reason: str, checkpoint_id: int | None = None
) -> SpectrumRecord:
    """What is kept of a measured spectrum (``measure``): the row, the diagnosis's evidence, the API."""
    result = measured["result"]
    return SpectrumRecord(
        epoch=epoch,
        step=step,
        reason=reason,
        checkpoint_id=checkpoint_id,
        method=result.method,
        samples=measured["samples"],
        hvps=result.hvps,
        seconds=result.seconds,
        # A spectrum at a diverged point holds NaN: JSON keeps it as null, the columns as NaN.
        top=json_safe([float(v) for v in result.top]),
        bottom=json_safe([float(v) for v in result.bottom]),
        trace=_float_or_none(result.trace),
        trace_stderr=_float_or_none(result.trace_stderr),
        grad_norm=float(result.grad_norm),
        hg_norm=_float_or_none(result.hg_norm),
        critical_point=json_safe(measured["critical"]),
        density=json_safe(result.density),
    )


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)
