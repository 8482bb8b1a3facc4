"""Facts about architectures that need no torch: whether an arch can run a spec's data, the resnets'
stem and parameter counts (for the budget, models/budget.py). Which plug-in archs live workers
offer is models/arch_reports.py.
"""

from __future__ import annotations

from models.spec import BUILTIN_DATASETS, RESNETS, JobSpec

# Built-in datasets that are images (the rest are tables: a resnet cannot read them).
IMAGE_DATASETS = frozenset({"digits"})


def arch_problem(spec: JobSpec, offered: list[str]) -> str | None:
    """Why ``spec.model.arch`` cannot run (None when it can): no worker offers it, or a resnet on a
    built-in table. (An uploaded table is caught by the worker, which knows the data's shape.)"""
    arch = spec.model.arch
    if arch not in offered:
        return f"model.arch: unknown architecture {arch!r}; available: {', '.join(offered)}"
    dataset = spec.data.dataset
    if arch in RESNETS and dataset in BUILTIN_DATASETS and dataset not in IMAGE_DATASETS:
        return f"model.arch: {arch} needs images; data.dataset {dataset} is a table (use mlp)"
    return None


# ----- resnet sizes (torchvision's layouts; tests/test_resnets.py checks them against torch)
_BLOCKS = {
    "resnet18": (False, (2, 2, 2, 2)),
    "resnet34": (False, (3, 4, 6, 3)),
    "resnet50": (True, (3, 4, 6, 3)),
}


def small_stem(height: int, width: int) -> bool:
    """Images up to 64x64 get a 3x3 stride-1 stem without max-pooling (CIFAR-style): the ImageNet
    stem would shrink a 32x32 image to 8x8 before the first block."""
    return max(height, width) <= 64


def resnet_parameters(arch: str, in_channels: int, outputs: int, norm: bool, small: bool) -> int:
    bottleneck, depths = _BLOCKS[arch]
    expansion = 4 if bottleneck else 1
    bn = 2 if norm else 0  # a batch norm's weight and bias per channel
    total = (9 if small else 49) * in_channels * 64 + bn * 64
    inplanes = 64
    for stage, (planes, depth) in enumerate(zip((64, 128, 256, 512), depths, strict=True)):
        for block in range(depth):
            stride = 2 if stage > 0 and block == 0 else 1
            if bottleneck:
                convs = [(inplanes, planes, 1), (planes, planes, 9), (planes, planes * 4, 1)]
            else:
                convs = [(inplanes, planes, 9), (planes, planes, 9)]
            total += sum(a * b * k + bn * b for a, b, k in convs)
            if stride != 1 or inplanes != planes * expansion:  # the projection shortcut
                total += inplanes * planes * expansion + bn * planes * expansion
            inplanes = planes * expansion
    return total + (inplanes + 1) * outputs
