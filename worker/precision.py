"""Mixed precision and memory format for a job's device (``resources.precision``).

Weights, optimizer state and the loss stay fp32; only the forward pass runs under ``torch.autocast``
in bf16 or fp16. fp16's narrow exponent underflows small gradients, so it scales the loss before the
backward pass (``GradScaler``) and unscales before anything reads the gradients. bf16 has fp32's
exponent range and needs no scaler; it runs on CPUs too. Hessian spectra never run under autocast
(worker.curvature calls the model outside any autocast region): curvature is measured in fp32.

On CUDA, convolutional models also run channels-last (NHWC), the layout tensor cores want.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Precision:
    name: str  # fp32 | bf16 | fp16
    device_type: str
    scaler: torch.amp.GradScaler | None = None

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward pass's precision. The weight-cast cache is off: a CUDA graph replays the
        casts it captured, so eager updates must make them too to run the same kernels."""
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=DTYPES[self.name], cache_enabled=False)


def precision_for(name: str, device: torch.device) -> Precision:
    if name == "fp16" and device.type != "cuda":
        raise ValueError("resources.precision: fp16 needs a CUDA device and this worker has none; use bf16")
    scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None
    return Precision(name, device.type, scaler)


def convolutional(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def use_channels_last(model: nn.Module, device: torch.device) -> bool:
    """Convolutional models on CUDA: weights and inputs (the model's ``memory_format``) in NHWC."""
    if device.type != "cuda" or not convolutional(model) or not hasattr(model, "memory_format"):
        return False
    model.to(memory_format=torch.channels_last)
    model.memory_format = torch.channels_last
    return True
