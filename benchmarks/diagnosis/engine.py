"""One benchmark run, in this process, through the service's own engine.

``train`` is a counterfactual rerun: the training loop alone (no spectra, no diagnostics), reduced
to the numbers the labels compare. ``diagnose_case`` is what the service does with a job: the same
loop with diagnostics and Hessian spectra, the k-NN reference, the probe runs, then the rules.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch

from benchmarks.diagnosis.datasets import DataCase, load
from models.patch import merge_patch
from models.spec import JobSpec
from worker.curvature import analysis_batches
from worker.data import Prepared, prepare
from worker.diagnosis import diagnose
from worker.diagnosis.evidence import from_points
from worker.diagnosis.probes import run_probes
from worker.diagnosis.reference import reference_scores
from worker.hessian import classify_critical_point, spectrum
from worker.recorders import MemoryRecorder
from worker.training import Trainer

CPU = torch.device("cpu")
# Counterfactual reruns keep no spectra, diagnostics or intermediate checkpoints.
QUIET = {
    "analysis": {"hessian": {"enabled": False}, "diagnostics": False},
    "checkpoints": {"every_epochs": 10_000, "keep_best": False},
}


def prepared(spec: JobSpec, data: DataCase) -> Prepared:
    raw, test = load(data, spec.seed)
    # The separate test set only where the spec names one (the in-distribution rerun drops it).
    return prepare(spec.data, raw, spec.seed, test if spec.data.test_dataset else None)


def _finite(values: list[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


def outcome(recorder: MemoryRecorder, summary: dict[str, Any]) -> dict[str, Any]:
    """What the labels compare: final and best losses of each split, and whether it diverged."""
    train, val = recorder.series("train/loss"), recorder.series("val/loss")
    test, val_acc = recorder.series("test/loss"), recorder.series("val/accuracy")
    diverged = summary["diverged_step"] is not None or not train or not math.isfinite(train[-1])
    return {
        "diverged": diverged,
        "train_loss": math.inf if diverged else train[-1],
        "best_train_loss": min(_finite(train), default=math.inf),
        "val_loss": math.inf if diverged else val[-1],
        "best_val_loss": min(_finite(val), default=math.inf),
        "test_loss": math.inf if diverged or not test else test[-1],
        "val_accuracy": val_acc[-1] if val_acc and not diverged else None,
        "train_curve": train,
        "val_curve": val,
        "epochs_run": summary["epochs_run"],
    }


def train(
    spec_dict: dict[str, Any], data: DataCase, patch: dict[str, Any] | None = None, test: bool = True
) -> dict[str, Any]:
    """A counterfactual rerun: the spec with ``patch`` applied, trained quietly (without evaluating
    the test split every epoch unless ``test``)."""
    spec = JobSpec.model_validate(merge_patch(merge_patch(spec_dict, patch or {}), QUIET))
    recorder = MemoryRecorder()
    data_ = prepared(spec, data)
    if not test:
        data_.X_test, data_.y_test = data_.X_test[:0], data_.y_test[:0]
    trainer = Trainer(spec, data_, recorder, CPU)
    at_init = gradients_at_init(trainer) if patch is None else {}
    summary = trainer.fit()
    out = outcome(recorder, summary)
    if patch is None:  # the run itself: measured more exactly than the rules can afford
        out["measured"] = {**unit_fractions(trainer), **at_init, "critical_point": critical_point(trainer)}
    return out


def diagnose_case(spec_dict: dict[str, Any], data: DataCase) -> dict[str, Any]:
    """The service's diagnosis of the run: verdict, findings (code → severity) and the patch."""
    spec = JobSpec.model_validate(spec_dict)
    data_ = prepared(spec, data)
    recorder = MemoryRecorder(spectra=True)
    trainer = Trainer(spec, data_, recorder, CPU)
    summary = trainer.fit()
    evidence = from_points(spec, summary, recorder.points, recorder.spectra)
    summary["reference"] = reference_scores(
        data_, spec.seed, spec.model.computes_linear_function, train_loss=evidence.final("train/loss")
    )
    summary["probes"] = run_probes(spec, data_, evidence)
    result = diagnose(from_points(spec, summary, recorder.points, recorder.spectra))
    verdict = result[0]
    return {
        "verdict": verdict.code,
        "findings": {f.code: f.severity for f in result[1:]},
        "patch": remedy_patch(result),
        "outcome": outcome(recorder, summary),
    }


def remedy_patch(result: list) -> dict[str, Any]:
    """What ``POST /v1/jobs/{id}/remedy`` applies by default (api.services.remedies.chosen_patches):
    the verdict's fix, then the fixes of error-level findings."""
    patch: dict[str, Any] = {}
    verdict = result[0]
    chosen = [verdict] + [f for f in result[1:] if f.severity == "error" and f.kind == "finding"]
    for f in chosen:
        if f.patch:
            patch = merge_patch(patch, f.patch)
    return patch


# ----- measurements of the trained model, on all training rows ---------------------------------
def gradients_at_init(trainer: Trainer) -> dict[str, float | None]:
    """Full-batch gradient at initialization: its norm, and the first hidden layer's gradient RMS
    over the head's (below 1e-2 the first layer learns a hundred times slower than the head)."""
    trainer.model.eval()  # no dropout draw: the training run that follows stays the same
    trainer.data_loss(trainer.model(trainer.train_X), trainer.train_y).backward()
    grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
    norm = float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)))
    named = [p.grad for n, p in trainer.model.named_parameters() if n.endswith("weight") and p.dim() >= 2]
    ratio = None
    if len(named) >= 3:
        rms = [float(g.norm()) / math.sqrt(g.numel()) for g in (named[0], named[-1])]
        ratio = rms[0] / rms[1] if rms[1] > 0 else None
    trainer.model.zero_grad(set_to_none=True)
    return {"grad_norm_at_init": norm, "gradient_ratio_at_init": ratio}


@torch.no_grad()
def unit_fractions(trainer: Trainer) -> dict[str, Any]:
    """Dead and saturated fractions of each hidden layer on every training row (the rules see 512)."""
    model, X = trainer.model.eval(), trainer.train_X
    out: dict[str, dict[str, float]] = {"dead": {}, "saturated": {}}
    blocks = getattr(model, "blocks", [])
    if not blocks:
        return out
    outputs: dict[int, torch.Tensor] = {}
    hooks = [
        b.act.register_forward_hook(lambda _m, _i, o, i=i: outputs.__setitem__(i, o))
        for i, b in enumerate(blocks)
    ]
    try:
        model(X)
    finally:
        for h in hooks:
            h.remove()
    kind = trainer.spec.model.activation
    for i, act in outputs.items():
        if kind in ("relu", "leaky_relu", "gelu"):
            out["dead"][f"blocks.{i}"] = float((act.amax(dim=0) <= 0).float().mean())
        elif kind in ("sigmoid", "tanh"):
            center, half = (0.5, 0.48) if kind == "sigmoid" else (0.0, 0.98)
            pinned = ((act - center).abs() > half).float().mean(dim=0)
            out["saturated"][f"blocks.{i}"] = float((pinned >= 0.9).float().mean())
    return out


def critical_point(trainer: Trainer) -> dict[str, Any] | None:
    """The final point's class from a float64 spectrum on every training row, converged tightly."""
    if trainer.state.diverged_step is not None:
        return None
    model = copy.deepcopy(trainer.model).double()
    batches = analysis_batches(trainer, len(trainer.train_y))
    batches = [(x.double(), y.double() if y.is_floating_point() else y) for x, y in batches]
    result = spectrum(
        model, trainer.data_loss, batches, top_k=1, bottom_k=1, trace=False, tol=1e-9, max_iter=300,
        keep_vectors=False, exact_threshold=0,
    )  # fmt: skip
    c = classify_critical_point(result)
    return {k: c[k] for k in ("class", "lambda_max", "lambda_min", "grad_norm", "noise_floor")}


def seed_spread(values: list[float]) -> float:
    finite = np.array(_finite(values))
    return float(finite.std(ddof=1)) if len(finite) >= 2 else 0.0
