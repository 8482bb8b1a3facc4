"""Run one job: claim it, prepare data and model, train with a database-backed recorder, finish.

Called by the Celery task; also callable directly (tests, ``saddle run-local``).
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import torch
from sqlalchemy import delete, select

from models.artifacts import get_store, key_for_checkpoint
from models.db import session_scope, with_retries
from models.metrics import Point, delete_after
from models.settings import get_settings
from models.spec import JobSpec
from models.summary import RunSummary
from models.tables import Checkpoint, utcnow
from sweeps.runtime import admit_trial, is_trial, is_watched, on_job_finished
from worker.data import Prepared
from worker.diagnosis import diagnose_job
from worker.diagnosis.evidence import Evidence, from_database
from worker.diagnosis.probes import run_probes
from worker.diagnosis.reference import reference_scores, regression_trees
from worker.failures import describe_failure, one_line
from worker.finetune import initialize_from_parent
from worker.jobdata import prepare_data
from worker.lifecycle import (
    Claim,
    Heartbeat,
    LeaseLost,
    fenced_update,
    finish,
    run_claimed,
    when_finished,
)
from worker.metric_writer import PROGRESS_SECONDS, MetricWriter
from worker.phases import PhaseClock
from worker.spectra import record_spectrum
from worker.training import StopTraining, Trainer, resolve_device

log = logging.getLogger("saddle.worker")


class DbRecorder:
    """Hands metric points and progress to the job's metric writer (worker.metric_writer), which
    commits them on its own thread; flushes it before anything that must find them stored."""

    def __init__(self, claim: Claim, heartbeat: Heartbeat, clock: PhaseClock) -> None:
        self.claim = claim
        self.heartbeat = heartbeat
        self.clock = clock
        settings = get_settings()
        self.writer = MetricWriter(
            claim,
            batch_points=settings.metric_flush_points,
            queue_batches=settings.metric_queue_batches,
            # A pruner reads a trial's epoch values while it runs: each epoch's, as it ends.
            progress_seconds=0.0 if is_watched(claim.job_id) else PROGRESS_SECONDS,
        )
        self.store = get_store()
        self.analysis_errors: list[str] = []
        # The best weights so far, stored with the next checkpoint of another kind (see save_checkpoint).
        self.pending_best: tuple[int, int, float | None, bytes] | None = None

    def log(self, points: list[Point]) -> None:
        self.writer.log(points)

    def epoch_end(self, epoch: int, step: int, progress: dict[str, Any]) -> None:
        self.writer.progress(progress)

    def close(self) -> None:
        """Everything logged is stored (a clean stop, the end of training), the best weights too."""
        self.store_pending_best()
        self.writer.close()

    def stop_reason(self) -> str | None:
        return self.heartbeat.reason

    def save_checkpoint(
        self, kind: str, epoch: int, step: int, val_loss: float | None, payload: bytes
    ) -> None:
        """A new best is held in memory until the next periodic or last checkpoint (or a clean
        stop): early in a run the validation loss improves nearly every epoch, and storing each
        improvement cost a small job a fifth of its time (benchmarks/job_cost.py). Nothing is lost
        to a crash: the resume replays from the checkpoint before, deterministically, and finds
        the same best again."""
        if kind == "best":
            self.pending_best = (epoch, step, val_loss, payload)
            return
        self.store_pending_best()
        with self.clock.phase("checkpoints"):
            self._save_checkpoint(kind, epoch, step, val_loss, payload)
        if kind == "periodic":
            with self.clock.phase("provisional_diagnosis"):
                diagnose_safely(self.claim, provisional=True)

    def store_pending_best(self) -> None:
        if self.pending_best is not None:
            with self.clock.phase("checkpoints"):
                self._save_checkpoint("best", *self.pending_best)
            self.pending_best = None

    def _save_checkpoint(
        self, kind: str, epoch: int, step: int, val_loss: float | None, payload: bytes
    ) -> None:
        # Everything logged up to this checkpoint is stored durably before it: a resume from it
        # must find the metrics of the epochs it does not replay.
        self.writer.flush()
        key = key_for_checkpoint(self.claim.job_id, kind, epoch)
        size = self.store.put_bytes(key, payload)
        replaced: list[str] = []

        def transaction() -> None:
            with session_scope() as session:
                fenced_update(session, self.claim, heartbeat_at=utcnow())
                if kind in ("best", "last"):  # one of each is kept: the newest
                    old = session.scalars(
                        select(Checkpoint).where(
                            Checkpoint.job_id == self.claim.job_id, Checkpoint.kind == kind
                        )
                    ).all()
                    replaced[:] = [c.artifact for c in old if c.artifact != key]
                    session.execute(
                        delete(Checkpoint).where(
                            Checkpoint.job_id == self.claim.job_id, Checkpoint.kind == kind
                        )
                    )
                session.execute(
                    delete(Checkpoint).where(
                        Checkpoint.job_id == self.claim.job_id,
                        Checkpoint.kind == kind,
                        Checkpoint.epoch == epoch,
                    )
                )
                session.add(
                    Checkpoint(
                        job_id=self.claim.job_id,
                        epoch=epoch,
                        step=step,
                        kind=kind,
                        artifact=key,
                        val_loss=val_loss,
                        size_bytes=size,
                    )
                )

        with_retries(transaction)
        for old_key in replaced:
            self.store.delete(old_key)

    def analyze(self, trainer: Trainer, epoch: int, reason: str) -> None:
        """A spectrum that fails is reported in the summary; it never fails the training run."""
        self.writer.flush()  # the spectrum row refers to metrics already stored
        try:
            with self.clock.phase("spectra"):
                record_spectrum(self.claim, trainer, epoch, reason)
        except LeaseLost:
            raise
        except Exception as exc:
            log.exception("job %s: spectrum at epoch %d failed", self.claim.job_id, epoch)
            self.analysis_errors.append(f"epoch {epoch} ({reason}): {type(exc).__name__}: {exc}")


def latest_checkpoint(job_id: str) -> tuple[Checkpoint | None, bytes | None]:
    with session_scope() as session:
        row = session.scalars(
            select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step.desc()).limit(1)
        ).one_or_none()
    if row is None:
        return None, None
    return row, get_store().get_bytes(row.artifact)


def resume_if_possible(claim: Claim, trainer: Trainer) -> None:
    """A re-delivered job continues from its newest checkpoint; points logged after it are dropped
    so the resumed attempt re-logs them exactly once."""
    if claim.attempt == 1:
        return
    row, payload = with_retries(lambda: latest_checkpoint(claim.job_id))
    if row is None or payload is None:
        return
    trainer.restore(payload)

    def transaction() -> None:
        with session_scope() as session:
            fenced_update(session, claim, heartbeat_at=utcnow())
            delete_after(session, claim.job_id, row.step)

    with_retries(transaction)
    log.info("job %s: attempt %d resumes from epoch %d", claim.job_id, claim.attempt, row.epoch)


def configure_torch(spec: JobSpec) -> None:
    threads = get_settings().torch_threads
    if threads:
        torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)


def run_job(job_id: str) -> str:
    """Run a job to its end; returns the final status (or 'skipped' when it must not run here,
    e.g. a sweep's trial while its sweep already runs max_concurrency trials)."""
    status = run_claimed(job_id, _train, admit=admit_trial)
    if status not in ("skipped", "lease_lost"):
        # A sweep's trial: record it and launch the next ones, once the job is written finished.
        when_finished(partial(on_job_finished, job_id))
    return status


def _train(job_claim: Claim, heartbeat: Heartbeat) -> str:
    spec = job_claim.spec
    clock = PhaseClock()
    phase = "preparing the data"  # named in the job's error if this step fails
    recorder: DbRecorder | None = None
    try:
        configure_torch(spec)
        device = resolve_device(spec.resources.device)
        with clock.phase("data"):
            data = prepare_data(spec, job_claim.project_id)
        phase = "building the model"
        recorder = DbRecorder(job_claim, heartbeat, clock)
        with clock.phase("model"):
            trainer = Trainer(spec, data, recorder, device)
            parent = initialize_from_parent(trainer, job_claim.project_id)
        with clock.phase("reference"):
            reference = reference_scores(data, spec.seed, spec.model.computes_linear_function)
        # What the diagnosis needs besides metrics (data facts, the reference scores) is stored at
        # the start, so provisional diagnoses at checkpoints can read it while the job runs.
        early = trainer.run_summary().model_copy(update={"reference": reference, "init_from": parent})
        with clock.phase("writes"):
            update_job(job_claim, device=str(device), summary=early.as_row())
        phase = "training"
        resume_if_possible(job_claim, trainer)
        with clock.phase("training"):
            trainer.fit()
        with clock.phase("writes"):
            recorder.close()  # every point stored before the job can be diagnosed and finished
        clock.add("updates", trainer.timing["epoch_seconds"])
        summary = trainer.run_summary()
        summary.reference, summary.init_from = reference, parent
        if recorder.analysis_errors:
            summary.analysis_errors = recorder.analysis_errors
    except StopTraining as stop:
        if stop.reason.startswith("lease lost"):
            _abandon(recorder)
            raise LeaseLost(stop.reason) from None
        try:  # a clean stop keeps what was logged
            recorder.close()  # type: ignore[union-attr]  # StopTraining comes from the trainer
        except LeaseLost:
            raise
        except Exception as exc:
            log.exception("job %s: storing its last metrics failed", job_claim.job_id)
            finish(job_claim, "failed", error=describe_failure(exc, phase))
            return "failed"
        if stop.reason == "cancelled":
            finish(job_claim, "cancelled", error="cancelled by request")
            return "cancelled"
        finish(job_claim, "failed", error=one_line(stop.reason))
        return "failed"
    except LeaseLost:
        _abandon(recorder)
        raise
    except Exception as exc:
        _abandon(recorder)
        log.exception("job %s: %s failed", job_claim.job_id, phase)
        finish(job_claim, "failed", error=describe_failure(exc, phase))
        return "failed"
    return _conclude(job_claim, summary, clock, data, device)


def _conclude(
    job_claim: Claim, summary: RunSummary, clock: PhaseClock, data: Prepared, device: torch.device
) -> str:
    """After training: probes, the verdict, then ``succeeded``. The verdict is stored before the
    status turns succeeded, so a client that sees a finished job also sees its diagnosis, probe runs
    included."""
    with clock.phase("writes"):
        update_job(job_claim, summary=summary.as_row())
    # A sweep's trials are compared with each other (deeper_is_worse, the leaderboard): no probes,
    # and no trees (20-30 ms of one core on a few hundred rows: ~10% of a short trial).
    ev = None
    if not is_trial(job_claim.job_id):
        with clock.phase("probes"):
            ev = stored_evidence(job_claim)  # the one read of the finished run: trees, probes, verdict
    if ev is not None:
        with clock.phase("reference"):
            trees = trees_safely(job_claim, data, ev)
        with clock.phase("probes"):
            probes = probe_safely(job_claim, data, device, ev)
        if trees or probes is not None:
            summary.reference = (summary.reference or {}) | trees
            summary.probes = probes
            # The verdict reads the run already in memory, with the summary as its row will hold it
            # (finish writes it): no second read of every series, no extra write.
            ev.summary = summary.as_row()
    with clock.phase("diagnosis"):
        diagnose_safely(job_claim, ev=ev)
    summary.phases = dict(clock.seconds)  # the finishing write itself is the rest of the job's time
    finish(job_claim, "succeeded", summary=summary)
    return "succeeded"


def _abandon(recorder: DbRecorder | None) -> None:
    """The attempt ends without its queued points (it failed, or another attempt holds the job)."""
    if recorder is not None:
        recorder.writer.abandon()


def update_job(job_claim: Claim, **values: Any) -> None:
    """A fenced update of the job row that waits out a database outage."""

    def transaction() -> None:
        with session_scope() as session:
            fenced_update(session, job_claim, **values)

    with_retries(transaction)


def diagnose_safely(job_claim: Claim, provisional: bool = False, ev: Evidence | None = None) -> None:
    """The diagnosis reads what was stored (or ``ev``, the stored run already read); if it fails,
    training goes on and the job keeps its status. A database outage is waited out, so a restart at
    the end of a job does not cost its verdict."""
    try:
        # diagnose_job retries its own write; this covers its reads (about 18 s of outage).
        with_retries(
            lambda: diagnose_job(job_claim.job_id, provisional=provisional, spec=job_claim.spec, ev=ev),
            attempts=8,
        )
    except Exception:
        log.exception("job %s: diagnosis failed", job_claim.job_id)


def stored_evidence(job_claim: Claim) -> Evidence | None:
    """The finished run as stored (its final summary written), read once for the trees, the probes
    and the verdict; None when the read fails (the verdict then goes without the trees and the
    probes, and reads the run itself)."""
    try:
        ev, _ = with_retries(lambda: from_database(job_claim.job_id, job_claim.spec))
        return ev
    except Exception:
        log.exception("job %s: reading the finished run failed", job_claim.job_id)
        return None


def trees_safely(job_claim: Claim, data: Prepared, ev: Evidence) -> dict[str, Any]:
    """The trees' held-out loss for a regression whose final training loss stays material
    (``reference.regression_trees``: known only now, after training), added to ``ev``'s reference
    too, so the probes see the loss they make large; empty when not wanted, and when fitting them
    fails (the verdict then goes without that comparison)."""
    try:
        trees = regression_trees(data, job_claim.spec.seed, ev.reference, ev.final("train/loss"))
    except Exception:
        log.exception("job %s: the trees' reference failed", job_claim.job_id)
        return {}
    if trees:
        ev.summary["reference"] = ev.reference | trees
    return trees


def probe_safely(
    job_claim: Claim, data: Prepared, device: torch.device, ev: Evidence
) -> dict[str, Any] | None:
    """The probe runs, where the stored evidence calls for them (worker.diagnosis.probes); a probe
    that fails leaves the verdict to the rules."""
    try:
        return run_probes(job_claim.spec, data, ev, device)
    except Exception:
        log.exception("job %s: probe runs failed", job_claim.job_id)
        return None
