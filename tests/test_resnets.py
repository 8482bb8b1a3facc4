"""ResNets, precision and their curvature and diagnosis on the engine alone (no services, seconds)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn
from torch.nn import functional as F

from models.archs import resnet_parameters
from models.spec import JobSpec
from worker.curvature import analysis_batches
from worker.data import Prepared, Scaler, load_builtin, prepare
from worker.diagnosis.evidence import Evidence, from_points
from worker.diagnosis.rules import gradient_flow, stage_rms, units
from worker.hessian import activation_elements, spectrum
from worker.nets import build_model
from worker.recorders import MemoryRecorder
from worker.training import Trainer

CPU = torch.device("cpu")
DIGITS = {
    "data": {"dataset": "digits", "scaling": "minmax", "train_size": 96},
    "model": {"arch": "resnet18", "norm": "batch"},
    "optimizer": {"name": "adam", "lr": 1e-3},
    "batch_size": 32,
    "epochs": 1,
    "analysis": {"hessian": {"enabled": False}},
    "checkpoints": {"every_epochs": 100, "keep_best": False},
}


def images(n: int = 48, shape: tuple[int, int, int] = (3, 8, 8), classes: int = 4) -> Prepared:
    """A generated CIFAR-like set: a class is a colour and a brightness pattern, plus noise."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, classes, n)
    X = rng.normal(0, 0.5, (n, *shape)).astype(np.float32) + y[:, None, None, None] / classes
    flat = X.reshape(n, -1)
    scaler = Scaler("none", np.zeros(flat.shape[1], np.float32), np.ones(flat.shape[1], np.float32))
    return Prepared(
        flat[:32], y[:32], flat[32:], y[32:], flat[:0], y[:0],
        "classification", "classification", classes, classes, scaler, shape, {"task": "classification"},
    )  # fmt: skip


def trainer_on(data: Prepared, **overrides: Any) -> Trainer:
    spec = JobSpec.model_validate({**DIGITS, **overrides})
    return Trainer(spec, data, MemoryRecorder(), CPU)


def digits_trainer(**overrides: Any) -> Trainer:
    spec = JobSpec.model_validate({**DIGITS, **overrides})
    return Trainer(spec, prepare(spec.data, load_builtin("digits", {}, 0), 0), MemoryRecorder(), CPU)


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50"])
@pytest.mark.parametrize(("shape", "norm"), [((3, 32, 32), "batch"), ((1, 96, 96), "none")])
def test_the_budget_counts_resnet_parameters_exactly(arch: str, shape: tuple[int, ...], norm: str) -> None:
    spec = JobSpec.model_validate({"data": {"dataset": "digits"}, "model": {"arch": arch, "norm": norm}})
    model = build_model(spec.model, math.prod(shape), 10, shape, 0)
    small = shape[1] <= 64
    assert isinstance(model.maxpool, nn.Identity) == small  # the CIFAR stem only for small images
    assert model.conv1.kernel_size == ((3, 3) if small else (7, 7))
    torch_count = sum(p.numel() for p in model.parameters())
    assert resnet_parameters(arch, shape[0], 10, norm == "batch", small) == torch_count


def test_resnet18_trains_on_generated_rgb_images_and_keeps_torchvision_names() -> None:
    trainer = trainer_on(
        images(shape=(3, 16, 16)), epochs=2, model={"arch": "resnet18", "norm": "batch", "dropout": 0.2}
    )
    trainer.fit()
    losses = trainer.recorder.series("train/loss")
    assert all(math.isfinite(v) for v in losses)
    assert trainer.model.conv1.in_channels == 3  # input channels from the data
    assert isinstance(trainer.model.fc[0], nn.Dropout) and trainer.model.fc[1].out_features == 4
    names = {n for n, _ in trainer.model.named_parameters()}
    assert {"conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "layer4.1.bn2.bias"} <= names
    # L2 reaches conv and linear weights only, never batch-norm parameters or biases.
    assert all(".bn" not in n and not n.startswith("bn") for n in trainer.weight_names)


@pytest.mark.parametrize(
    ("model", "field"),
    [
        ({"hidden": [32]}, "model.hidden"),
        ({"channels": [8]}, "model.channels"),
        ({"norm": "layer"}, "model.norm"),
        ({"norm_position": "after_activation"}, "model.norm_position"),
        ({"dropout": [0.1]}, "model.dropout"),
    ],
)
def test_knobs_that_do_not_apply_to_a_resnet_are_refused(model: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        JobSpec.model_validate({"data": {"dataset": "digits"}, "model": {"arch": "resnet18", **model}})


def test_precision_is_checked() -> None:
    with pytest.raises(ValidationError, match="resources.precision: fp16 needs a CUDA device"):
        JobSpec.model_validate(
            {"data": {"dataset": "digits"}, "resources": {"device": "cpu", "precision": "fp16"}}
        )
    with pytest.raises(ValidationError, match="precision"):
        JobSpec.model_validate({"data": {"dataset": "digits"}, "resources": {"precision": "fp8"}})
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):  # device auto on this CPU
        digits_trainer(resources={"precision": "fp16"})


def test_bf16_on_the_cpu_runs_the_forward_in_bf16_and_keeps_fp32_weights_and_spectra() -> None:
    # A small cnn: the resnet18 trains in bf16 through the worker in tests/test_resnet_jobs.py.
    model = {"arch": "cnn", "channels": [4, 8], "hidden": [16], "norm": "batch"}
    trainer = trainer_on(images(shape=(3, 8, 8)), model=model, resources={"precision": "bf16"})
    seen: list[torch.dtype] = []
    trainer.model.mlp.head.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    trainer.fit()
    assert torch.bfloat16 in seen  # training and evaluation under autocast
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert all(math.isfinite(v) for v in trainer.recorder.series("train/batch_loss"))
    seen.clear()
    # The worker's spectrum call (worker.curvature) runs outside autocast: curvature in fp32.
    batches = analysis_batches(trainer, 16)
    result = spectrum(
        trainer.model,
        trainer.data_loss,
        batches,
        top_k=1,
        bottom_k=0,
        trace=False,
        max_iter=3,
        hvp_mode="double_backward",
    )
    assert result.dtype == "float32" and set(seen) == {torch.float32}
    assert math.isfinite(result.top[0])


class TinyResNet(nn.Module):
    """A residual block with batch norm at 8 channels: what the spectrum must handle in a ResNet-18,
    at a size a CPU test affords (a ResNet-18's 11M parameters take minutes here)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x.view(-1, 3, 8, 8))
        return self.head(torch.relu(h + self.body(h)).mean(dim=(2, 3)))


def test_the_spectrum_of_a_batch_norm_resnet_runs_in_eval_mode_and_in_memory_bounded_chunks() -> None:
    torch.manual_seed(0)
    model = TinyResNet().train()
    data = images(n=40)
    X, y = torch.as_tensor(data.X_train, dtype=torch.float32), torch.as_tensor(data.y_train)
    model(X)  # one training-mode pass: running statistics that differ from the batch's
    running = model.stem[1].running_mean.clone()
    per_row = activation_elements(model, X)
    # A budget of 5 rows' activations: the 32 rows go in 7 chunks, and give what one chunk gives.
    fixed = {"top_k": 2, "bottom_k": 1, "trace": False, "seed": 1, "exact_threshold": 0}
    chunked = spectrum(model, F.cross_entropy, [(X, y)], max_activations=5 * per_row, **fixed)
    whole = spectrum(model, F.cross_entropy, [(X, y)], **fixed)
    assert model.training and torch.equal(model.stem[1].running_mean, running)  # eval inside, restored
    assert np.allclose(chunked.top, whole.top, rtol=1e-4) and np.allclose(
        chunked.bottom, whole.bottom, atol=1e-5
    )
    assert per_row > 10 * X.shape[1]  # activations, not inputs, are what a chunk must bound
    # The batch-norm Hessian of eval mode: the same as the model's with its running statistics frozen.
    model.eval()
    frozen = spectrum(model, F.cross_entropy, [(X, y)], **fixed)
    assert np.allclose(frozen.top, whole.top, rtol=1e-4)


def test_dead_channels_and_gradient_flow_are_read_per_residual_stage() -> None:
    # Biases of -10 after each batch norm kill every channel (init.bias sets conv/linear biases
    # only, and resnet convs have none), so the stage outputs are set dead by hand here.
    trainer = trainer_on(images(), model={"arch": "resnet18", "norm": "batch"})
    for stage in (trainer.model.layer3, trainer.model.layer4):
        for block in stage:
            nn.init.constant_(block.bn2.bias, -10.0)
            nn.init.zeros_(block.bn2.weight)
            if block.downsample is not None:
                nn.init.constant_(block.downsample[1].bias, -10.0)
                nn.init.zeros_(block.downsample[1].weight)
    trainer.fit()
    rec = trainer.recorder
    dead = {name: rec.series(f"units/{name}/dead_fraction")[-1] for name in ("layer1", "layer3", "layer4")}
    assert dead["layer3"] == 1.0 and dead["layer4"] == 1.0 and dead["layer1"] < 0.5, dead
    ev = from_points(trainer.spec, trainer.summary(), rec.points, [])
    finding = units(ev, underfit=True)[0]
    assert finding.code == "dead_units" and "channels" in finding.recommendation
    assert set(finding.evidence["dead_fraction_per_layer"]) == {"layer3", "layer4"}
    assert [stage for stage, _ in stage_rms(ev)] == ["stem", "layer1", "layer2", "layer3", "layer4", "fc"]


def test_vanishing_gradients_across_resnet_stages() -> None:
    spec = JobSpec.model_validate({"data": {"dataset": "digits"}, "model": {"arch": "resnet18"}})
    norms = {
        "conv1.weight": 1e-5,
        "layer1.0.conv1.weight": 1e-4,
        "layer4.1.conv2.weight": 1e-2,
        "fc.weight": 1.0,
    }
    ev = Evidence(
        spec,
        {"layer_sizes": dict.fromkeys(norms, 100)},
        {f"grad/{k}": np.full(3, v) for k, v in norms.items()},
        {},
    )
    finding = gradient_flow(ev)
    assert finding is not None and finding.code == "vanishing_gradients"
    assert list(finding.evidence["grad_rms_per_layer"]) == ["stem", "layer1", "layer4", "fc"]
    assert finding.evidence["first_layer"] == "stem" and finding.evidence["last_layer"] == "fc"
