"""Architectures, norms, dropout, optimizers and targets on the engine alone (no services, fast)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn

from models.settings import get_settings
from models.spec import JobSpec
from models.spec import Model as ModelSpec
from worker.data import load_builtin, prepare
from worker.recorders import MemoryRecorder
from worker.training import Trainer

CPU = torch.device("cpu")
QUIET = {
    "analysis": {"hessian": {"enabled": False}},
    "checkpoints": {"every_epochs": 100, "keep_best": False},
}


class TinyNet(nn.Module):
    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.head = nn.Linear(n_in, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


def tiny_factory(model: ModelSpec, input_shape: tuple[int, ...], n_outputs: int) -> nn.Module:
    """A model plug-in as an operator would register it (keyword arguments, see docs/models.md)."""
    return TinyNet(math.prod(input_shape), n_outputs)


tiny_factory.arch_name = "tiny"  # type: ignore[attr-defined]


def trained(spec: dict[str, Any]) -> tuple[Trainer, MemoryRecorder]:
    js = JobSpec.model_validate({**QUIET, **spec})
    raw = load_builtin(js.data.dataset, js.data.params, js.seed)
    recorder = MemoryRecorder()
    trainer = Trainer(js, prepare(js.data, raw, js.seed), recorder, CPU)
    trainer.fit()
    return trainer, recorder


def assert_learns(recorder: MemoryRecorder) -> None:
    losses = recorder.series("train/loss")
    assert all(math.isfinite(v) for v in recorder.series("train/batch_loss")), "a NaN/inf batch loss"
    assert losses[-1] < losses[0], losses


IRIS = {"data": {"dataset": "iris", "scaling": "standardize"}, "batch_size": 16, "epochs": 4}


def test_cnn_on_digits_images_trains() -> None:
    trainer, recorder = trained(
        {
            "data": {"dataset": "digits", "scaling": "minmax"},
            "model": {"arch": "cnn", "channels": [4, 8], "hidden": [16]},
            "optimizer": {"name": "adam", "lr": 0.01},
            "batch_size": 32,
            "epochs": 4,
        }
    )
    assert any(isinstance(m, nn.Conv2d) for m in trainer.model.modules())
    assert_learns(recorder)
    assert recorder.series("val/accuracy")[-1] > 0.6  # chance is 0.1


@pytest.fixture()
def plugin_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("SADDLE_MODEL_PLUGINS", '["tests.test_architectures:tiny_factory"]')
    get_settings.cache_clear()
    yield
    monkeypatch.delenv("SADDLE_MODEL_PLUGINS")
    get_settings.cache_clear()  # the next reader sees the environment as it was


def test_a_registered_plugin_is_selectable_by_arch(plugin_settings: None) -> None:
    trainer, recorder = trained({**IRIS, "model": {"arch": "tiny"}, "optimizer": {"name": "adam"}})
    assert isinstance(trainer.model, TinyNet)
    assert_learns(recorder)


def test_an_unknown_arch_fails_with_the_known_names() -> None:
    with pytest.raises(ValueError, match=r"unknown architecture 'resnet9000'; known: mlp, linear, cnn"):
        trained({**IRIS, "model": {"arch": "resnet9000"}})


@pytest.mark.parametrize("norm", ["batch", "layer"])
@pytest.mark.parametrize("position", ["before_activation", "after_activation"])
def test_norm_before_or_after_the_activation_trains(norm: str, position: str) -> None:
    model = {"hidden": [16, 16], "norm": norm, "norm_position": position}
    trainer, recorder = trained({**IRIS, "model": model, "optimizer": {"name": "sgd", "lr": 0.1}})
    kind = nn.BatchNorm1d if norm == "batch" else nn.LayerNorm
    blocks = list(trainer.model.blocks)
    assert all(isinstance(b.norm, kind) for b in blocks)
    assert all(b.norm_first == (position == "before_activation") for b in blocks)
    assert_learns(recorder)


def test_per_layer_dropout() -> None:
    model = {"hidden": [16, 16, 16], "dropout": [0.0, 0.2, 0.5]}
    trainer, recorder = trained({**IRIS, "model": model, "optimizer": {"name": "adam", "lr": 0.01}})
    rates = [b.drop.p if isinstance(b.drop, nn.Dropout) else 0.0 for b in trainer.model.blocks]
    assert rates == [0.0, 0.2, 0.5]
    assert_learns(recorder)


@pytest.mark.parametrize(
    "optimizer",
    [
        {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True},
        {"name": "adam", "lr": 0.01},
        {"name": "adamw", "lr": 0.01, "weight_decay": 0.01},
        {"name": "rmsprop", "lr": 0.005},
        {"name": "adagrad", "lr": 0.05},
    ],
    ids=lambda o: o["name"],
)
def test_every_optimizer_trains_without_nan(optimizer: dict[str, Any]) -> None:
    trainer, recorder = trained({**IRIS, "model": {"hidden": [16]}, "optimizer": optimizer})
    assert type(trainer.optimizer).__name__.lower() == optimizer["name"]
    if optimizer.get("nesterov"):
        assert trainer.optimizer.param_groups[0]["nesterov"] is True
    assert_learns(recorder)


def test_regression_on_class_labels_trains_mse_with_one_output() -> None:
    spec = {**IRIS, "data": {**IRIS["data"], "task": "regression"}, "optimizer": {"name": "adam"}}
    trainer, recorder = trained(spec)
    assert (trainer.data.task, trainer.data.data_task, trainer.data.n_outputs) == (
        "regression",
        "classification",
        1,
    )
    assert trainer.model.head.out_features == 1
    assert "train/accuracy" not in {p.name for p in recorder.points}  # MSE, not cross-entropy
    assert_learns(recorder)
