"""Celery tasks. Importing this module loads torch; only worker processes import it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery.exceptions import Reject

from worker.celery_app import ON_DEMAND_SPECTRUM, RUN_JOB, app
from worker.curvature import on_demand_spectrum
from worker.lifecycle import DatabaseAway
from worker.runner import run_job
from worker.sweeps import connect_signals
from worker.timing import BATCH_TIMING_TASK, run_study


def requeue_while_database_away(run: Callable[..., Any], *args: Any) -> Any:
    """A task whose job could not be claimed because the database stayed away goes back on its queue
    (acks are late: a failed task would be acked, and its queued job left with no message)."""
    try:
        return run(*args)
    except DatabaseAway as exc:
        raise Reject(f"database unreachable: {exc}", requeue=True) from exc


@app.task(name=RUN_JOB, acks_late=True, reject_on_worker_lost=True)
def run_job_task(job_id: str) -> str:
    return requeue_while_database_away(run_job, job_id)


@app.task(name=BATCH_TIMING_TASK, acks_late=True, reject_on_worker_lost=True)
def batch_size_timing_task(job_id: str) -> str:
    """A batch-size timing study (a Job row of kind "study"); see worker.timing."""
    return requeue_while_database_away(run_study, job_id)


@app.task(name=ON_DEMAND_SPECTRUM, acks_late=True, reject_on_worker_lost=True)
def on_demand_spectrum_task(job_id: str, checkpoint_id: int, settings: dict) -> int:
    return requeue_while_database_away(on_demand_spectrum, job_id, checkpoint_id, settings)


# A sweep trial's worker also runs its pruning watcher (see worker.sweeps).
connect_signals()
