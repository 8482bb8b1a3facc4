"""What the rules read: one run's series, spectra, summary and spec, from the database or memory."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import select

from models.db import session_scope
from models.metrics import read_series
from models.spec import JobSpec
from models.spectrum import SpectrumRecord
from models.tables import Job, Spectrum


@dataclass
class Evidence:
    spec: JobSpec
    summary: dict[str, Any]
    epoch_series: dict[str, np.ndarray]  # per-epoch series, index = epoch (0 = before training)
    step_series: dict[str, np.ndarray]  # per-update series
    spectra: list[dict[str, Any]] = field(default_factory=list)
    test_is_separate: bool = False

    # ----- convenience -------------------------------------------------------------------------
    def series(self, name: str) -> np.ndarray:
        return self.epoch_series.get(name, np.zeros(0))

    @property
    def classification(self) -> bool:
        return self.summary.get("data", {}).get("task") == "classification"

    @property
    def reference(self) -> dict[str, Any]:
        return self.summary.get("reference") or {}

    @property
    def epochs_run(self) -> int:
        return int(self.summary.get("epochs_run") or max(0, len(self.series("train/loss")) - 1))

    def final(self, name: str) -> float:
        s = self.series(name)
        return float(s[-1]) if len(s) else math.nan

    def layer_grad_norms(self) -> dict[str, np.ndarray]:
        return {k[len("grad/") :]: v for k, v in self.epoch_series.items() if k.startswith("grad/")}

    def unit_fractions(self, kind: str) -> dict[str, float]:
        suffix = f"/{kind}_fraction"
        return {
            k[len("units/") : -len(suffix)]: float(v[-1])
            for k, v in self.epoch_series.items()
            if k.startswith("units/") and k.endswith(suffix) and len(v)
        }


STEP_SERIES = ("train/lr", "train/batch_loss", "train/batch_grad_norm")


def from_points(
    spec: JobSpec, summary: dict[str, Any], points: list, spectra: list[dict[str, Any]]
) -> Evidence:
    """Evidence from in-memory points (``MemoryRecorder.points``)."""
    grouped: dict[str, list[tuple[int, float]]] = {}
    for p in points:
        grouped.setdefault(p.name, []).append((p.step, p.value))
    epoch, step = {}, {}
    for name, pts in grouped.items():
        pts.sort()
        values = np.array([v for _, v in pts], dtype=np.float64)
        (step if name in STEP_SERIES else epoch)[name] = values
    return Evidence(spec, summary, epoch, step, spectra, bool(spec.data.test_dataset))


def from_database(job_id: str, spec: JobSpec | None = None) -> tuple[Evidence, Job]:
    """The stored job as evidence; ``spec`` is the job's, when the caller (the claim) validated it."""
    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise LookupError(f"job {job_id} not found")
        series = read_series(session, job_id, max_points=10**9)
        rows = session.scalars(select(Spectrum).where(Spectrum.job_id == job_id).order_by(Spectrum.step))
        spectra = [SpectrumRecord.of_row(r).model_dump() for r in rows]
        session.expunge(job)
    spec = spec or JobSpec.model_validate(job.spec)
    epoch, step = {}, {}
    for s in series:
        values = np.array([math.nan if v is None else v for v in s.values], dtype=np.float64)
        (step if s.name in STEP_SERIES else epoch)[s.name] = values
    return Evidence(spec, job.summary or {}, epoch, step, spectra, bool(spec.data.test_dataset)), job
