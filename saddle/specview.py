"""The parts of a JobSpec that apply to it, for display (``saddle show``; the dashboard's job page
keeps the same rules in ``api/static/js/specview.js``).

A stored spec carries every field with its default: an MLP has ``channels`` (cnn only), adam has
``momentum`` (sgd and rmsprop only), a constant schedule has ``gamma``. Shown as they are, they
suggest settings that the run never used.
"""

from __future__ import annotations

from typing import Any

# Optimizer fields each optimizer reads (worker.training.make_optimizer).
OPTIMIZER_FIELDS = {
    "sgd": ("lr", "momentum", "nesterov", "weight_decay"),
    "adam": ("lr", "betas", "eps", "weight_decay"),
    "adamw": ("lr", "betas", "eps", "weight_decay"),
    "rmsprop": ("lr", "momentum", "eps", "weight_decay"),
    "adagrad": ("lr", "eps", "weight_decay"),
}
# Schedule fields each schedule reads (worker.schedules).
SCHEDULE_FIELDS = {
    "constant": ("warmup_epochs",),
    "step": ("warmup_epochs", "step_epochs", "gamma"),
    "exponential": ("warmup_epochs", "gamma"),
    "cosine": ("warmup_epochs", "min_lr"),
    "plateau": ("warmup_epochs", "gamma", "patience"),
}


# Stored specs come back with their keys in the database's order; these read best first.
MODEL_ORDER = ("arch", "hidden", "channels", "activation", "norm", "norm_position", "dropout", "init")


def model_view(model: dict[str, Any]) -> dict[str, Any]:
    """A linear model is one layer: no hidden layers, activation, norm or dropout; only cnn has
    channels; norm_position matters only with a norm; init.std only for normal weights."""
    arch = model.get("arch", "mlp")
    order = [*MODEL_ORDER, *(k for k in model if k not in MODEL_ORDER)]
    keep = {k: model[k] for k in order if k in model}
    if arch == "linear":
        keep = {k: v for k, v in keep.items() if k in ("arch", "init")}
    if arch != "cnn":
        keep.pop("channels", None)
    if keep.get("norm", "none") == "none":
        keep.pop("norm_position", None)
    init = dict(keep.get("init") or {})
    if init.get("weights") != "normal":
        init.pop("std", None)
    if init.get("bias") is None:
        init.pop("bias", None)
    if init in ({}, {"weights": "default"}):
        keep.pop("init", None)
    else:
        keep["init"] = init
    return keep


def optimizer_view(optimizer: dict[str, Any]) -> dict[str, Any]:
    name = optimizer.get("name", "sgd")
    fields = OPTIMIZER_FIELDS.get(name, tuple(optimizer))
    return {"name": name} | {k: optimizer[k] for k in fields if k in optimizer}


def schedule_view(schedule: dict[str, Any]) -> dict[str, Any]:
    name = schedule.get("name", "constant")
    fields = SCHEDULE_FIELDS.get(name, tuple(schedule))
    return {"name": name} | {k: schedule[k] for k in fields if k in schedule and schedule[k]}
