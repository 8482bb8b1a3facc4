"""Model factories: MLP, linear, a small CNN, and operator-registered plug-ins.

Parameter names are stable (``blocks.<i>.linear``, ``head``) because ``init_from.freeze`` and the
per-layer diagnostics refer to layers by these names.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch
from torch import nn

from models.settings import get_settings
from models.spec import Init
from models.spec import Model as ModelSpec

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
        x = self.features(x.view(x.shape[0], *self.input_shape))
        return self.mlp(x.flatten(1))


def _plugin_factories() -> dict[str, Callable[..., nn.Module]]:
    factories = {}
    for path in get_settings().model_plugins:
        module_name, _, attr = path.partition(":")
        factory = getattr(importlib.import_module(module_name), attr)
        factories[getattr(factory, "arch_name", attr)] = factory
    return factories


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
    else:
        plugins = _plugin_factories()
        if spec.arch not in plugins:
            known = ["mlp", "linear", "cnn", *plugins]
            raise ValueError(f"model.arch: unknown architecture {spec.arch!r}; known: {', '.join(known)}")
        model = plugins[spec.arch](n_in=n_in, n_out=n_out, spec=spec, input_shape=input_shape)
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
