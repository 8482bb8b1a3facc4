"""Spectra stored with their job: every ``analysis.hessian.every_epochs``, at the end, at the best
checkpoint, and on demand for a stored checkpoint (``POST .../checkpoints/{id}/spectrum``)."""

from __future__ import annotations

import copy
import io
import logging
from typing import Any

import torch
from sqlalchemy import select

from models.artifacts import get_store, key_for_escape_direction
from models.db import session_scope, with_retries
from models.spec import JobSpec
from models.summary import RunSummary
from models.tables import Checkpoint, Job
from worker.curvature import measure, spectrum_record
from worker.jobdata import prepare_data
from worker.lifecycle import Claim, fenced_update
from worker.recorders import MemoryRecorder
from worker.training import Trainer, load_checkpoint, resolve_device

log = logging.getLogger("saddle.worker")


def store(
    job_id: str,
    claim: Claim | None,
    epoch: int,
    step: int,
    reason: str,
    measured: dict[str, Any],
    checkpoint_id: int | None = None,
) -> int:
    """Insert the spectrum row (and its escape direction); fenced when a training attempt writes it."""
    result = measured["result"]
    row_id: list[int] = []

    def transaction() -> None:
        with session_scope() as session:
            if claim is not None:
                fenced_update(session, claim)
            row = spectrum_record(measured, epoch, step, reason, checkpoint_id).as_row(job_id)
            session.add(row)
            session.flush()
            if result.escape_direction is not None:
                key = key_for_escape_direction(job_id, row.id)
                buffer = io.BytesIO()
                torch.save(torch.as_tensor(result.escape_direction).float().cpu(), buffer)
                get_store().put_bytes(key, buffer.getvalue())
                row.escape_artifact = key
            row_id[:] = [row.id]

    with_retries(transaction)
    return row_id[0]


def record_spectrum(claim: Claim, trainer: Trainer, epoch: int, reason: str) -> None:
    store(claim.job_id, claim, epoch, trainer.state.step, reason, measure(trainer, trainer.model))
    if reason == "final":
        record_best(claim, trainer)


def record_best(claim: Claim, trainer: Trainer) -> None:
    """At the end, also measure the best checkpoint (the weights a user would deploy)."""
    with session_scope() as session:
        best = session.scalars(
            select(Checkpoint).where(Checkpoint.job_id == claim.job_id, Checkpoint.kind == "best")
        ).one_or_none()
    if best is None or best.epoch == trainer.state.epoch:
        return
    model = copy.deepcopy(trainer.model)
    model.load_state_dict(load_checkpoint(get_store().get_bytes(best.artifact))["model"])
    store(claim.job_id, claim, best.epoch, best.step, "best", measure(trainer, model), checkpoint_id=best.id)


def on_demand_spectrum(job_id: str, checkpoint_id: int, settings: dict[str, Any]) -> int:
    """A spectrum of a stored checkpoint with other settings (POST .../checkpoints/{id}/spectrum).
    The API answered 202; if the spectrum fails, the failure goes where training-time ones go,
    ``summary.analysis_errors`` of the job, instead of only into this worker's log."""
    try:
        return _on_demand_spectrum(job_id, checkpoint_id, settings)
    except Exception as exc:
        log.exception("job %s: on-demand spectrum of checkpoint %s failed", job_id, checkpoint_id)
        note = f"on-demand spectrum of checkpoint {checkpoint_id}: {type(exc).__name__}: {exc}"
        with session_scope() as session:
            job = session.get(Job, job_id, with_for_update=True)
            if job is not None:
                summary = RunSummary.of(job.summary)
                summary.analysis_errors = [*(summary.analysis_errors or []), note.splitlines()[0]]
                job.summary = summary.as_row()
        return -1


def _on_demand_spectrum(job_id: str, checkpoint_id: int, settings: dict[str, Any]) -> int:
    with session_scope() as session:
        job = session.get(Job, job_id)
        ckpt = session.get(Checkpoint, checkpoint_id)
        if job is None or ckpt is None or ckpt.job_id != job_id:
            raise LookupError(f"checkpoint {checkpoint_id} of job {job_id} not found")
        spec, project_id, artifact, epoch, step = (
            JobSpec.model_validate(job.spec),
            job.project_id,
            ckpt.artifact,
            ckpt.epoch,
            ckpt.step,
        )
    trainer = Trainer(
        spec, prepare_data(spec, project_id), MemoryRecorder(), resolve_device(spec.resources.device)
    )
    trainer.model.load_state_dict(load_checkpoint(get_store().get_bytes(artifact))["model"])
    return store(
        job_id, None, epoch, step, "on_demand", measure(trainer, trainer.model, settings), checkpoint_id
    )
