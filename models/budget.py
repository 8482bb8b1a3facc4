"""The one place that decides whether a job is too big to run: model parameters, data bytes, epochs ×
rows and the number of Hessian spectra, against the ``SADDLE_MAX_*`` settings.

Every way a job comes to exist (``POST /v1/jobs``, sweeps and studies, remedies, fine-tunes) asks
``budget_problems`` before anything is written, and the worker asks again (``spec_problems``) before
it loads data or builds the model, so a row written by an older API or by hand cannot slip through.

Sizes come from the spec alone (no torch): built-in datasets have known shapes, generated ones take
them from their parameters, uploaded ones from their stored row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.archs import resnet_parameters, small_stem
from models.settings import Settings, get_settings
from models.spec import GENERATOR_DEFAULTS, RESNETS, JobSpec
from models.tables import Dataset

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
    if m.arch in RESNETS:
        # An upload's channels are not known here: 3 (RGB) bounds them for image files.
        channels = 1 if spec.data.dataset == "digits" else 3
        side = math.isqrt(max(1, features // channels))
        return resnet_parameters(m.arch, channels, outputs, m.norm == "batch", small_stem(side, side))
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


@dataclass(frozen=True)
class Limits:
    parameters: int
    data_bytes: int
    epoch_rows: int
    spectra: int

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> Limits:
        s = settings or get_settings()
        return cls(s.max_parameters, s.max_data_bytes, s.max_epoch_rows, s.max_spectra)


def spectra_count(spec: JobSpec) -> int:
    """Spectra a job takes: one every ``every_epochs``, and at initialization, the best checkpoint and the end."""
    h = spec.analysis.hessian
    if not h.enabled:
        return 0
    return (spec.epochs // h.every_epochs if h.every_epochs else 0) + 3


def budget_problems(
    spec: JobSpec, uploaded: tuple[int, int] | None = None, limits: Limits | None = None
) -> list[str]:
    """What in ``spec`` exceeds the budget, each naming the quantity, the limit and its setting."""
    limits = limits or Limits.from_settings()
    rows, features, outputs = dataset_shape(spec, uploaded)
    problems = []
    if spec.model.arch in ("mlp", "linear", "cnn", *RESNETS):
        params = parameter_count(spec, features, outputs)
        if params > limits.parameters:
            problems.append(
                f"model: {params:,} parameters exceed the budget of {limits.parameters:,} (SADDLE_MAX_PARAMETERS)"
            )
    data_bytes = rows * features * 4
    if data_bytes > limits.data_bytes:
        problems.append(
            f"data: {rows:,} rows × {features:,} features ({data_bytes / 2**30:.1f} GiB as float32) exceed the "
            f"budget of {limits.data_bytes / 2**30:.1f} GiB (SADDLE_MAX_DATA_BYTES)"
        )
    seen = min(rows, spec.data.train_size or rows)
    if spec.epochs * seen > limits.epoch_rows:
        problems.append(
            f"epochs: {spec.epochs:,} epochs × {seen:,} rows = {spec.epochs * seen:,} samples exceed the "
            f"budget of {limits.epoch_rows:,} (SADDLE_MAX_EPOCH_ROWS)"
        )
    spectra = spectra_count(spec)
    if spectra > limits.spectra:
        problems.append(
            f"analysis.hessian.every_epochs: {spectra:,} spectra exceed the budget of {limits.spectra:,} "
            "per job (SADDLE_MAX_SPECTRA)"
        )
    return problems


def uploaded_shape(session: Session, project_id: str, dataset_id: str | None) -> tuple[int, int] | None:
    """(rows, features) of the project's uploaded dataset ``dataset_id``; None for a built-in name or
    an id the project does not have."""
    if dataset_id is None or len(dataset_id) != 32:
        return None
    row = session.execute(
        select(Dataset.n_rows, Dataset.n_features).where(
            Dataset.id == dataset_id, Dataset.project_id == project_id
        )
    ).first()
    return (row[0], row[1]) if row else None


def spec_problems(session: Session, project_id: str, spec: JobSpec) -> list[str]:
    """budget_problems with the uploaded dataset's shape looked up: what the worker asks before it
    allocates anything for a job."""
    return budget_problems(spec, uploaded_shape(session, project_id, spec.data.dataset))
