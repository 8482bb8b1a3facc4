"""ResNet-18/34/50 from torchvision, fitted to the job: its input channels, a CIFAR-style stem for
small images, the spec's norm, activation, dropout and initialization. No pretrained weights.

Parameter names are torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1``, ..., ``fc``), so
``init_from.freeze: [conv1, bn1, layer1]`` freezes the stem and the first stage, and the diagnosis
reads gradient flow per stage (``layer1`` .. ``layer4``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from models.archs import small_stem
from models.spec import Model as ModelSpec


def _load_torchvision() -> None:
    """Import torchvision where its compiled ops do not match this torch build (the CUDA wheel
    next to a CPU torch, as on the CPU machines): it then fails on import while registering
    shapes for two detection ops it could not load. Declaring those two ops first lets the import
    finish; the models used here are plain Python and never call them."""
    found = importlib.util.find_spec("torchvision")
    if found is None or not found.submodule_search_locations:
        raise ImportError("torchvision is not installed (pip install torchvision)")
    try:
        for lib in Path(next(iter(found.submodule_search_locations))).glob("_C*.so"):
            torch.ops.load_library(str(lib))
    except OSError:
        for op in ("nms", "qnms"):
            torch.library.define(
                f"torchvision::{op}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
            )


_load_torchvision()
from torchvision.models import resnet as tv  # noqa: E402  (after the ops are declared)

LAYOUTS = {
    "resnet18": (tv.BasicBlock, [2, 2, 2, 2]),
    "resnet34": (tv.BasicBlock, [3, 4, 6, 3]),
    "resnet50": (tv.Bottleneck, [3, 4, 6, 3]),
}
STAGES = ("layer1", "layer2", "layer3", "layer4")
Activation = Callable[[], nn.Module]


class ResNet(tv.ResNet):
    """torchvision's ResNet reading the trainer's flattened rows as (C, H, W) images."""

    def __init__(
        self, arch: str, spec: ModelSpec, input_shape: tuple[int, ...], n_out: int, act: Activation
    ) -> None:
        block, layers = LAYOUTS[arch]
        norm = nn.BatchNorm2d if spec.norm == "batch" else _no_norm
        super().__init__(block, layers, num_classes=n_out, norm_layer=norm)
        self.input_shape = tuple(input_shape)
        self.memory_format = torch.contiguous_format  # channels_last on CUDA (Trainer)
        channels, height, width = self.input_shape
        if small_stem(height, width):
            self.conv1 = nn.Conv2d(channels, 64, 3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(channels, 64, 7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        if spec.activation != "relu":
            _swap_activations(self, act)
        rate = float(spec.dropout)  # one rate (models.spec refuses a list for a resnet)
        if rate > 0:
            self.fc = nn.Sequential(nn.Dropout(rate), self.fc)  # fc.1 is the classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        images = x.view(x.shape[0], *self.input_shape).contiguous(memory_format=self.memory_format)
        return super().forward(images)

    def activation_sites(self) -> list[tuple[str, nn.Module]]:
        """Where unit statistics are read: each stage's output (after its last block's activation)."""
        return [(name, getattr(self, name)) for name in STAGES]


def _no_norm(_channels: int) -> nn.Module:
    return nn.Identity()


def _swap_activations(model: nn.Module, act: Activation) -> None:
    """The spec's activation in place of every ReLU (torchvision's blocks call theirs twice)."""
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.ReLU):
                setattr(module, name, act())


def build_resnet(
    arch: str, spec: ModelSpec, input_shape: tuple[int, ...] | None, n_out: int, act: Activation
) -> ResNet:
    if input_shape is None or len(input_shape) != 3:
        raise ValueError(f"model.arch: {arch} needs image-shaped inputs (C, H, W); this dataset is a table")
    return ResNet(arch, spec, input_shape, n_out, act)
