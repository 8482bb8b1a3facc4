"""Celery tasks. Importing this module loads torch; only worker processes import it."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from functools import partial
from typing import Any

import billiard.process
from celery.exceptions import Reject
from celery.signals import task_prerun, worker_shutting_down

from sweeps.runtime import connect_signals
from worker import handover
from worker.celery_app import ON_DEMAND_SPECTRUM, RUN_JOB, app
from worker.lifecycle import (
    DatabaseAway,
    ShuttingDown,
    finishing_with_next_claim,
    shutting_down,
    stop_for_shutdown,
    write_pending,
)
from worker.registry import connect_arch_reports
from worker.runner import run_job
from worker.spectra import on_demand_spectrum
from worker.timing import BATCH_TIMING_TASK, run_study

# Sent by a worker's main process to its pool processes when it starts shutting down. Not SIGTERM:
# billiard terminates pool processes with SIGTERM and expects them to die of it.
SHUTDOWN_SIGNAL = signal.SIGUSR2


def requeue_unclaimed(run: Callable[..., Any], *args: Any) -> Any:
    """A task whose job could not be claimed, because the database stayed away or this worker is
    shutting down, goes back on its queue (acks are late: a failed task would be acked, and its
    queued job left with no message)."""
    try:
        return run(*args)
    except DatabaseAway as exc:
        raise Reject(f"database unreachable: {exc}", requeue=True) from exc
    except ShuttingDown as exc:
        raise Reject(str(exc), requeue=True) from exc


def after_the_last_write(run: Callable[..., Any]) -> Callable[..., Any]:
    """For a task that claims no job: the ended job's finishing write, if it waits for a claim, is
    written first (worker.lifecycle.finishing_with_next_claim)."""

    def first_the_write(*args: Any) -> Any:
        write_pending()
        return run(*args)

    return first_the_write


# What each task runs, also for the messages a pool process takes itself (worker.handover).
RUNS: dict[str, Callable[..., Any]] = {
    RUN_JOB: partial(requeue_unclaimed, run_job),
    BATCH_TIMING_TASK: partial(requeue_unclaimed, run_study),
    ON_DEMAND_SPECTRUM: partial(requeue_unclaimed, after_the_last_write(on_demand_spectrum)),
}


def run_then_the_next(name: str, *args: Any) -> Any:
    """Run the task, then, if it ran something, this process takes its queue's next messages itself
    (worker.handover) before Celery gets the slot back. Each job's finishing write commits with the
    next claim."""
    with finishing_with_next_claim(handover.enabled()):
        result = RUNS[name](*args)
        if result not in handover.RAN_NOTHING:
            handover.run_following(RUNS, shutting_down)
    return result


@app.task(name=RUN_JOB, acks_late=True, reject_on_worker_lost=True)
def run_job_task(job_id: str) -> str:
    return run_then_the_next(RUN_JOB, job_id)


@app.task(name=BATCH_TIMING_TASK, acks_late=True, reject_on_worker_lost=True)
def batch_size_timing_task(job_id: str) -> str:
    """A batch-size timing study (a Job row of kind "study"); see worker.timing."""
    return run_then_the_next(BATCH_TIMING_TASK, job_id)


@app.task(name=ON_DEMAND_SPECTRUM, acks_late=True, reject_on_worker_lost=True)
def on_demand_spectrum_task(job_id: str, checkpoint_id: int, settings: dict) -> int:
    return run_then_the_next(ON_DEMAND_SPECTRUM, job_id, checkpoint_id, settings)


# A sweep trial's worker also runs its pruning watcher (see sweeps.runtime).
connect_signals()
# The API validates model.arch against what live workers report (worker.registry).
connect_arch_reports()


# ----- shutdown: a worker asked to stop hands its running jobs back instead of finishing them
@task_prerun.connect(weak=False)
def _listen_for_shutdown(**_: Any) -> None:
    """In the pool process, before each task: the main process's shutdown signal stops its job.
    (Not at worker_process_init: billiard resets SIGUSR2 to its own exit handler after that.)"""
    with contextlib.suppress(ValueError):  # a threads pool: only the main thread takes signals
        signal.signal(SHUTDOWN_SIGNAL, lambda *_: stop_for_shutdown())


@worker_shutting_down.connect(weak=False)
def _forward_shutdown(**_: Any) -> None:
    """In the main process, on SIGTERM/SIGINT/SIGQUIT: its pool processes stop their jobs (a solo or
    threads pool runs them here, hence the flag in this process too)."""
    stop_for_shutdown()
    for child in billiard.process.active_children():
        with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
            os.kill(child.pid, SHUTDOWN_SIGNAL)
