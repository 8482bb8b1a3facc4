"""One Hessian spectrum as Saddle keeps it, from the measurement to the row to the API.

``worker.hessian.SpectrumResult`` is the library's full result (tensors, residuals, timings);
``SpectrumRecord`` is what of it is kept: the worker builds it once (``worker.curvature.measure``),
the ``spectra`` table stores its fields (``as_row``), the diagnosis reads them back (``of_row``;
an in-memory run keeps the same fields, ``worker.recorders``), and the API answers them
(``api.schemas.SpectrumOut`` adds the row's creation time). Non-finite values (a spectrum at a diverged point) are kept as None in the lists and
the JSON columns, as NaN in the float columns."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from models.tables import Spectrum


class SpectrumRecord(BaseModel):
    id: int | None = None  # the row's, once stored
    epoch: int
    step: int
    reason: str  # initial | periodic | best | final | on_demand
    checkpoint_id: int | None = None
    method: str  # exact | lanczos
    samples: int
    hvps: int
    seconds: float
    top: list[float | None]
    bottom: list[float | None]
    trace: float | None
    trace_stderr: float | None
    grad_norm: float  # NaN at a diverged point
    hg_norm: float | None
    critical_point: dict[str, Any]
    density: dict[str, Any] | None
    has_escape_direction: bool = False  # the saddle's escape direction is stored as an artifact

    @classmethod
    def of_row(cls, row: Spectrum) -> SpectrumRecord:
        values = {name: getattr(row, name) for name in cls.model_fields if name != "has_escape_direction"}
        return cls(**values, has_escape_direction=bool(row.escape_artifact))

    def as_row(self, job_id: str) -> Spectrum:
        return Spectrum(job_id=job_id, **self.model_dump(exclude={"id", "has_escape_direction"}))
