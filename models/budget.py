"""Refuse, before anything is written, a spec whose model or data would exceed the configured budget.

Sizes come from the spec alone (no torch): built-in datasets have known shapes, generated ones take
them from their parameters, uploaded ones from their stored row.
"""

from __future__ import annotations

from models.spec import GENERATOR_DEFAULTS, JobSpec

# (rows, features, outputs) of the fixed built-in datasets.
FIXED_SHAPES = {
    "digits": (1797, 64, 10),
    "iris": (150, 4, 3),
    "wine": (178, 13, 3),
    "breast_cancer": (569, 30, 2),
    "diabetes": (442, 10, 1),
}


def dataset_shape(spec: JobSpec, uploaded: tuple[int, int] | None = None) -> tuple[int, int, int]:
    """(rows, features, outputs); ``uploaded`` is (rows, features) of an uploaded dataset."""
    name, params = spec.data.dataset, spec.data.params
    if name in FIXED_SHAPES:
        return FIXED_SHAPES[name]
    if name in GENERATOR_DEFAULTS:
        p = {**GENERATOR_DEFAULTS[name], **params}
        features = int(p.get("n_features", 2))
        outputs = int(p.get("centers", 2)) if name == "blobs" else (1 if name == "gaussian_regression" else 2)
        return int(p["n_samples"]), features, outputs
    rows, features = uploaded or (0, 0)
    return rows, features, max(2, min(features, 1000))  # classes are unknown here: a generous bound


def parameter_count(spec: JobSpec, features: int, outputs: int) -> int:
    m = spec.model
    if m.arch == "linear":
        return (features + 1) * outputs
    widths = [features, *m.hidden]
    if m.arch == "cnn":
        channels, total = 1, 0
        for c in m.channels:
            total += (9 * channels + 1) * c
            channels = c
        widths = [channels * max(1, features // 4 ** len(m.channels)), *m.hidden]
    else:
        total = 0
    for a, b in zip(widths[:-1], widths[1:], strict=True):
        total += (a + 1) * b + (2 * b if m.norm != "none" else 0)
    return total + (widths[-1] + 1) * outputs


def budget_problems(
    spec: JobSpec, max_parameters: int, max_data_bytes: int, uploaded: tuple[int, int] | None = None
) -> list[str]:
    rows, features, outputs = dataset_shape(spec, uploaded)
    problems = []
    if spec.model.arch in ("mlp", "linear", "cnn"):
        params = parameter_count(spec, features, outputs)
        if params > max_parameters:
            problems.append(
                f"model: {params:,} parameters exceed the budget of {max_parameters:,} (SADDLE_MAX_PARAMETERS)"
            )
    data_bytes = rows * features * 4
    if data_bytes > max_data_bytes:
        problems.append(
            f"data: {rows:,} rows × {features:,} features ({data_bytes / 2**30:.1f} GiB as float32) exceed the "
            f"budget of {max_data_bytes / 2**30:.1f} GiB (SADDLE_MAX_DATA_BYTES)"
        )
    return problems
