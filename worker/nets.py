"""Model factories: MLP, linear, a small CNN, ResNet-18/34/50 (worker/resnets.py), and plug-ins.

Parameter names are stable (``blocks.<i>.linear``, ``head``; torchvision's for the resnets) because
``init_from.freeze`` and the per-layer diagnostics refer to layers by these names.

Plug-ins are Python entry points in the group ``saddle.models`` (the entry point's name is the
arch), or import paths in ``SADDLE_MODEL_PLUGINS``; either names a factory called as
``factory(model=<models.spec.Model>, input_shape=(C, H, W) or (features,), n_outputs=k)`` that
returns an ``nn.Module`` taking a batch of shape ``(batch, *input_shape)`` (docs/models.md).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from functools import lru_cache
from importlib.metadata import entry_points

import torch
from torch import nn

from models.settings import get_settings
from models.spec import BUILTIN_ARCHS, RESNETS, Init
from models.spec import Model as ModelSpec
from worker.resnets import build_resnet

log = logging.getLogger("saddle.worker")
ENTRY_POINT_GROUP = "saddle.models"

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "leaky_relu": lambda: nn.LeakyReLU(0.01),
    "identity": nn.Identity,
}


class Block(nn.Module):
    """Linear → [norm] → activation → [norm] → [dropout], norm on the side the spec asks for."""

    def __init__(self, n_in: int, n_out: int, spec: ModelSpec, dropout: float) -> None:
        super().__init__()
        self.linear = nn.Linear(n_in, n_out)
        self.norm = _norm(spec.norm, n_out)
        self.norm_first = spec.norm_position == "before_activation"
        self.act = ACTIVATIONS[spec.activation]()
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x)
        x = self.act(self.norm(x)) if self.norm_first else self.norm(self.act(x))
        return self.drop(x)


def _norm(kind: str, width: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm1d(width)
    if kind == "layer":
        return nn.LayerNorm(width)
    return nn.Identity()


class MLP(nn.Module):
    def __init__(self, n_in: int, n_out: int, spec: ModelSpec) -> None:
        super().__init__()
        rates = spec.dropout if isinstance(spec.dropout, list) else [spec.dropout] * len(spec.hidden)
        widths = [n_in, *spec.hidden]
        self.blocks = nn.ModuleList(
            Block(a, b, spec, rate) for a, b, rate in zip(widths[:-1], widths[1:], rates, strict=True)
        )
        self.head = nn.Linear(widths[-1], n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)


class Linear(nn.Module):
    def __init__(self, n_in: int, n_out: int, spec: ModelSpec) -> None:
        super().__init__()
        self.head = nn.Linear(n_in, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


class CNN(nn.Module):
    """3x3 conv blocks with 2x2 pooling, then the MLP head of ``hidden``; inputs arrive flattened."""

    def __init__(self, n_in: int, n_out: int, spec: ModelSpec, input_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.memory_format = torch.contiguous_format  # channels_last on CUDA (Trainer)
        channels, h, w = self.input_shape
        layers: list[nn.Module] = []
        for width in spec.channels:
            layers += [nn.Conv2d(channels, width, 3, padding=1), ACTIVATIONS[spec.activation]()]
            if spec.norm == "batch":
                layers.append(nn.BatchNorm2d(width))
            if min(h, w) >= 2:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            channels = width
        self.features = nn.Sequential(*layers)
        self.mlp = MLP(channels * h * w, n_out, spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        images = x.view(x.shape[0], *self.input_shape).contiguous(memory_format=self.memory_format)
        return self.mlp(self.features(images).flatten(1))

    def activation_sites(self) -> list[tuple[str, nn.Module]]:
        convs = [(f"features.{i}", m) for i, m in enumerate(self.features) if _is_activation(m)]
        return convs + [(f"mlp.blocks.{i}", b.act) for i, b in enumerate(self.mlp.blocks)]


def _is_activation(module: nn.Module) -> bool:
    return type(module) in {type(make()) for make in ACTIVATIONS.values()}


def activation_sites(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules whose outputs are a layer's units (channels, for convolutions), by layer name:
    what the unit statistics read. Plug-ins say nothing unless they define ``activation_sites``."""
    if hasattr(model, "activation_sites"):
        return model.activation_sites()
    return [(f"blocks.{i}", b.act) for i, b in enumerate(getattr(model, "blocks", []))]


Factory = Callable[..., nn.Module]


def plugin_factories() -> dict[str, Factory]:
    """Installed ``saddle.models`` entry points and SADDLE_MODEL_PLUGINS paths, by arch name; loaded
    once per process (and again if the setting changes)."""
    return _plugins(tuple(get_settings().model_plugins))


@lru_cache
def _plugins(paths: tuple[str, ...]) -> dict[str, Factory]:
    factories: dict[str, Factory] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:  # a broken plug-in costs its own arch, not the worker
            factories[ep.name] = ep.load()
        except Exception:
            log.exception("model plug-in %s (%s) failed to load; its arch is not offered", ep.name, ep.value)
    for path in paths:
        module_name, _, attr = path.partition(":")
        factory = getattr(importlib.import_module(module_name), attr)
        factories[getattr(factory, "arch_name", attr)] = factory
    return {name: f for name, f in factories.items() if name not in BUILTIN_ARCHS}


def available_architectures() -> list[str]:
    """What this worker can build: the built-ins and its plug-ins (reported to the API)."""
    return [*BUILTIN_ARCHS, *sorted(plugin_factories())]


def _plugin_model(spec: ModelSpec, n_in: int, n_out: int, input_shape: tuple[int, ...] | None) -> nn.Module:
    plugins = plugin_factories()
    if spec.arch not in plugins:
        known = ", ".join(available_architectures())
        raise ValueError(f"model.arch: unknown architecture {spec.arch!r}; known: {known}")
    shape = tuple(input_shape) if input_shape else (n_in,)
    model = plugins[spec.arch](model=spec, input_shape=shape, n_outputs=n_out)
    # The trainer keeps rows flat; the plug-in is promised (batch, *input_shape).
    model.register_forward_pre_hook(lambda _m, args: (args[0].view(args[0].shape[0], *shape), *args[1:]))
    return model


def build_model(
    spec: ModelSpec, n_in: int, n_out: int, input_shape: tuple[int, ...] | None, seed: int
) -> nn.Module:
    torch.manual_seed(seed)
    if spec.arch == "mlp":
        model: nn.Module = MLP(n_in, n_out, spec)
    elif spec.arch == "linear":
        model = Linear(n_in, n_out, spec)
    elif spec.arch == "cnn":
        if input_shape is None:
            raise ValueError("model.arch: cnn needs image-shaped inputs (digits, or an NPZ of images)")
        model = CNN(n_in, n_out, spec, input_shape)
    elif spec.arch in RESNETS:
        model = build_resnet(spec.arch, spec, input_shape, n_out, ACTIVATIONS[spec.activation])
    else:
        model = _plugin_model(spec, n_in, n_out, input_shape)
    apply_init(model, spec.init)
    return model


def apply_init(model: nn.Module, init: Init) -> None:
    for module in model.modules():
        if not isinstance(module, nn.Linear | nn.Conv2d):
            continue
        _init_weight(module.weight, init)
        if module.bias is not None and (init.bias is not None or init.weights == "zeros"):
            nn.init.constant_(module.bias, init.bias or 0.0)


def _init_weight(weight: torch.Tensor, init: Init) -> None:
    if init.weights == "zeros":
        nn.init.zeros_(weight)
    elif init.weights == "normal":
        nn.init.normal_(weight, 0.0, init.std or 0.01)
    elif init.weights == "xavier":
        nn.init.xavier_uniform_(weight)
    elif init.weights == "kaiming":
        nn.init.kaiming_uniform_(weight, nonlinearity="relu")


def weight_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The parameters L2 applies to: weights of linear and conv layers; never biases or norm layers."""
    out = []
    for mod_name, module in model.named_modules():
        if isinstance(module, nn.Linear | nn.Conv2d):
            out.append((f"{mod_name}.weight" if mod_name else "weight", module.weight))
    return out


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
