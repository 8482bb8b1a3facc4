"""Response bodies. Request bodies are the shared pydantic models (models.spec)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from models.spectrum import SpectrumRecord
from models.summary import RunSummary


class JobOut(BaseModel):
    """A job as the API answers it; routes serialize it with ``exclude_unset`` so ``summary`` holds
    only the fields its run wrote."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    status: str
    spec: dict[str, Any]
    tags: dict[str, Any]
    progress: dict[str, Any]
    summary: RunSummary
    verdict: str | None
    error: str | None
    attempts: int
    device: str | None
    kind: str
    sweep_id: str | None
    parent_id: str | None
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class RemedyOffer(BaseModel):
    """What POST /v1/jobs/{id}/remedy would accept now (clients offer a remedy only then)."""

    available: bool  # a request without a body would be accepted
    applies: list[str]  # the codes whose fixes that request would apply
    findings: list[str]  # the codes accepted one at a time: {"findings": [code]}


class JobDetailOut(JobOut):
    """GET /v1/jobs/{id}: the job and, once it has finished, what a remedy of it would apply."""

    remedy: RemedyOffer


class JobPage(BaseModel):
    items: list[JobOut]
    next_cursor: str | None


class SeriesOut(BaseModel):
    name: str
    steps: list[int]
    epochs: list[float]
    values: list[float | None]
    total_points: int
    downsampled: bool
    min: list[float | None] | None = None
    max: list[float | None] | None = None


class MetricsOut(BaseModel):
    job_id: str
    series: list[SeriesOut]


class CheckpointOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    epoch: int
    step: int
    kind: str
    val_loss: float | None
    size_bytes: int
    created_at: datetime


class SpectrumOut(SpectrumRecord):
    """A stored spectrum (models.spectrum.SpectrumRecord) with its row's id and creation time."""

    id: int
    created_at: datetime


class DiagnosisOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    code: str
    kind: str
    severity: str
    confidence: float
    evidence: dict[str, Any]
    recommendation: str
    patch: dict[str, Any]
    provisional: bool
    created_at: datetime


class FieldError(BaseModel):
    field: str
    message: str
    type: str


class ErrorOut(BaseModel):
    """Every 4xx/5xx body: a readable summary, and per-field errors for a 422 from validation."""

    detail: str
    errors: list[FieldError] | None = None


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (400, 401, 404, 409, 413, 422, 429, 503)
}
