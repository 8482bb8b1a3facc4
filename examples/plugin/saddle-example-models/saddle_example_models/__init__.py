"""An example Saddle model plug-in: a small all-convolutional network for images of any size.

A worker with this package installed offers ``model.arch: example_convnet``; the factory below is
what it calls (the signature is Saddle's plug-in contract, docs/models.md).
"""

from __future__ import annotations

from typing import Any

from torch import nn


def convnet(model: Any, input_shape: tuple[int, ...], n_outputs: int) -> nn.Module:
    """Two 3x3 conv layers of ``model.channels`` widths (ReLU), global average pooling, a linear
    classifier. Images arrive as (batch, C, H, W); tables, as (batch, features), get an MLP of
    ``model.hidden`` instead."""
    if len(input_shape) != 3:
        widths = [input_shape[0], *model.hidden]
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(a, b), nn.ReLU()]
        return nn.Sequential(*layers, nn.Linear(widths[-1], n_outputs))
    channels, layers = input_shape[0], []
    for width in model.channels:
        layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
        channels = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, n_outputs))
