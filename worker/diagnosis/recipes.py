"""Patches that the diagnosis proposes and the probe runs try: the standard training recipe for the
same model, and a larger model. Plain spec edits (JSON merge patches), no torch."""

from __future__ import annotations

from typing import Any

from models.patch import merge_patch
from models.spec import RESNETS, JobSpec

# The same model, trained the way a practitioner starts: Adam at 3e-3, standardized features,
# shuffled rows, the default initialization, no schedule, noise or clipping.
RECIPE: dict[str, Any] = {
    "data": {"scaling": "standardize", "shuffle": True},
    "optimizer": {"name": "adam", "lr": 3e-3, "momentum": 0.0, "nesterov": False, "weight_decay": 0.0},
    "schedule": {"name": "constant", "warmup_epochs": 0},
    "regularization": {"gradient_noise": {"c": 0.0}, "grad_clip": None, "early_stopping": None},
    "model": {"init": {"weights": "default", "std": None, "bias": None}},
}


def larger_model(spec: JobSpec) -> dict[str, Any]:
    """Twice the width and one more layer, ReLU; a linear model (or a stack of identity layers, a
    linear model in disguise) becomes a two-layer ReLU network; a resnet, the next deeper resnet.
    All-zero weights become the default initialization: a larger network started at zero sits on
    the same symmetric saddle (every unit of a layer gets the same gradient), and the larger-model
    probe that showed the gain ran from the default one (RECIPE)."""
    model = spec.model
    if model.arch in RESNETS:  # the next deeper built-in (resnet50 is the largest)
        deeper = RESNETS[min(RESNETS.index(model.arch) + 1, len(RESNETS) - 1)]
        larger: dict[str, Any] = {"arch": deeper, "activation": "relu", "dropout": 0.0}
    elif model.arch == "linear" or model.activation == "identity":
        larger = {"arch": "mlp", "hidden": [64, 64], "activation": "relu", "dropout": 0.0}
    else:
        hidden = [min(4096, 2 * h) for h in model.hidden] or [64]
        larger = {"hidden": [*hidden, hidden[-1]], "activation": "relu", "dropout": 0.0}
    if model.init.weights == "zeros":
        larger["init"] = dict(RECIPE["model"]["init"])
    return {"model": larger}


def probe_patches(spec: JobSpec) -> dict[str, dict[str, Any]]:
    """The two probe runs as patches of the job's spec (what a remedy resubmits when one wins)."""
    return {"tuned_optimizer": RECIPE, "larger_model": merge_patch(RECIPE, larger_model(spec))}
