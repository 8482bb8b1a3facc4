"""The worker side of sweeps: admission at the claim, the per-process stepper that runs the
scheduling step after each trial, and the pruning watchers. Only worker processes import this module
(it starts threads and connects Celery signals); see ``sweeps`` for the design."""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from typing import Any

from celery.signals import task_postrun, worker_process_shutdown
from sqlalchemy import bindparam, case, func, select, update
from sqlalchemy.orm import Session

from models.db import session_scope
from models.jsonsafe import json_safe
from models.settings import get_settings
from models.tables import FINISHED_STATUSES, Job, Sweep, SweepTrial
from sweeps.scheduler import objective_series, step
from sweeps.spec import ADMITTED, SweepSpec, spec_of
from sweeps.study import judge, load_views
from worker.celery_app import RUN_JOB

log = logging.getLogger("saddle.sweeps")

_T, _J, _S = SweepTrial.__table__, Job.__table__, Sweep.__table__
ADMISSION_LOCK = 0x5357  # the namespace of the sweeps' advisory locks (pg_advisory_xact_lock(ns, key))


# ----- the stepper ----------------------------------------------------------------------------
class _Stepper(threading.Thread):
    """The worker process's scheduling thread: steps for the trials this process ended, run while the
    process already trains its next trial. Steps queued together for one sweep run once (a step
    records every ended trial of its sweep)."""

    def __init__(self) -> None:
        super().__init__(daemon=True, name="sweep-stepper")
        self.inbox: queue.Queue[tuple[str, str | None]] = queue.Queue()
        # The steps' own CPU. They run beside the next trial in the same process (and under its
        # GIL), so this is time the trial may have lost: benchmarks/sweep.py counts it as overhead.
        self.steps = 0
        self.cpu_seconds = 0.0

    def submit(self, job_id: str, sweep_id: str | None) -> None:
        self.inbox.put((job_id, sweep_id))

    def run(self) -> None:
        while True:
            batch = [self.inbox.get()]
            while True:
                try:
                    batch.append(self.inbox.get_nowait())
                except queue.Empty:
                    break
            stepped: set[str] = set()
            for job_id, sweep_id in batch:
                if sweep_id is None or sweep_id not in stepped:
                    started = time.thread_time()
                    step(job_id, sweep_id)
                    self.cpu_seconds += time.thread_time() - started
                    self.steps += 1
                    if sweep_id is not None:
                        stepped.add(sweep_id)
            for _ in batch:
                self.inbox.task_done()

    def drain(self, timeout: float) -> bool:
        """Wait until every submitted step ran; False if some are still due after ``timeout``."""
        deadline = time.monotonic() + timeout
        while self.inbox.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self.inbox.unfinished_tasks


_stepper: _Stepper | None = None
_stepper_pid = 0
_stepper_lock = threading.Lock()


def stepper() -> _Stepper:
    """This process's stepper, started on first use (a forked child starts its own)."""
    global _stepper, _stepper_pid
    with _stepper_lock:
        if _stepper is None or _stepper_pid != os.getpid() or not _stepper.is_alive():
            _stepper, _stepper_pid = _Stepper(), os.getpid()
            _stepper.start()
        return _stepper


# What ``admit`` learnt about the jobs this process runs: job id -> its sweep, or None for no trial.
_NOT_SEEN = object()
_trial_sweeps: dict[str, str | None] = {}


def on_job_finished(job_id: str) -> None:
    """The worker's hook at the end of ``run_job``, whatever the job's outcome. Never raises: a
    failure here must not turn a finished job into a failed task (GET heals a missed step).

    The step is handed to this process's stepper and the task returns at once: the next trial is
    already queued (lookahead), so the worker starts it while the step records this one."""
    try:
        stop_watcher(job_id)
        sweep_id = _trial_sweeps.pop(job_id, _NOT_SEEN)
        if sweep_id is None:
            return  # admit found no trial row: nothing to schedule
        stepper().submit(job_id, sweep_id if isinstance(sweep_id, str) else None)
    except Exception:
        log.exception("job %s: sweep scheduling after the trial failed", job_id)


def passed_over(job_id: str) -> None:
    """This process's delivery of ``job_id`` ran another job, whose project's turn it was (see
    dispatch.fairness): the end hook for ``job_id`` has nothing to record; its job waits for its next
    message."""
    _trial_sweeps[job_id] = None


def is_trial(job_id: str) -> bool:
    """Whether this process admitted ``job_id`` as a sweep's trial (until its hook ran)."""
    return isinstance(_trial_sweeps.get(job_id), str)


def flush_steps(timeout: float = 10.0) -> bool:
    """Run the steps still due in this process (worker shutdown, tests)."""
    return _stepper is None or _stepper_pid != os.getpid() or _stepper.drain(timeout)


def _admission_statements() -> tuple[Any, Any, Any]:
    """Built once: the trial row (on Postgres also taking the sweep's admission lock) and the
    conditional admission."""
    columns = [_T.c.id, _T.c.number, _T.c.state, _S.c.status]
    trial = select(*columns).select_from(_T.join(_S, _S.c.id == _T.c.sweep_id))
    trial = trial.where(_T.c.job_id == bindparam("b_job"))
    locked = trial.add_columns(func.pg_advisory_xact_lock(ADMISSION_LOCK, func.hashtext(_T.c.sweep_id)))
    busy = (
        select(func.count())
        .select_from(_T.join(_J, _J.c.id == _T.c.job_id))
        .where(
            _T.c.sweep_id == bindparam("b_sweep"),
            _T.c.state.in_(ADMITTED),
            _T.c.id != bindparam("b_trial"),
            _J.c.status.not_in(FINISHED_STATUSES),
        )
        .scalar_subquery()
    )
    admit_or_defer = (
        update(_T)
        .where(_T.c.id == bindparam("b_trial"), _T.c.state.in_(("queued", "deferred")))
        .values(state=case((busy < bindparam("b_cap"), "running"), else_="deferred"))
        .returning(_T.c.state)
    )
    return trial, locked, admit_or_defer


_ADMISSION = _admission_statements()


def admit_trial(session: Session, *, job: Job) -> bool:
    """The worker's claim asks this in its transaction, with the job row locked, before the job
    counts as started (``worker.lifecycle``): False when the job is a trial of a sweep that already
    runs ``max_concurrency`` trials. The trial is then ``deferred``, the delivery skipped, and a later
    step sends it again. A job that is no trial costs nothing.

    Two statements: the trial (taking, on Postgres, the sweep's admission lock — an advisory lock,
    not the sweep row's, which a step may hold a while), then its admission, conditional on the
    number of admitted trials whose job has not ended. The second statement's snapshot is taken
    after the lock, so two admissions of one sweep never both see the last free slot. SQLite needs
    no lock: the UPDATE takes its single write lock. An admitted trial of a sweep with a pruner gets
    its watcher."""
    if job.kind != "trial" or job.sweep_id is None:
        _trial_sweeps[job.id] = None
        return True
    trial, locked, admit_or_defer = _ADMISSION
    conn = session.connection()
    row = conn.execute(locked if conn.dialect.name == "postgresql" else trial, {"b_job": job.id}).first()
    if row is None:  # a trial job whose row is gone: let it run
        return True
    trial_id, number, state, sweep_status = row[:4]
    spec = spec_of(conn, sweep_id=job.sweep_id)[0]
    if state in ("queued", "deferred") and sweep_status == "running":
        new_state = conn.execute(
            admit_or_defer, {"b_trial": trial_id, "b_sweep": job.sweep_id, "b_cap": spec.max_concurrency}
        ).scalar()
        if new_state == "deferred":
            log.info("job %s: sweep %s runs max_concurrency trials; deferred", job.id, job.sweep_id)
            return False
    # Else admitted before (a second delivery, a re-queued attempt), ended, or its sweep ended: the
    # claim decides whether it runs.
    if len(_trial_sweeps) > 10_000:  # jobs that ended without the hook (skipped, lease lost)
        _trial_sweeps.clear()
    _trial_sweeps[job.id] = job.sweep_id
    if spec.pruner.type != "none":
        try:
            start_watcher(job.id, job.sweep_id, trial_id, number, spec)
        except Exception:
            log.exception("job %s: could not start the pruning watcher", job.id)
    return True


# ----- pruning --------------------------------------------------------------------------------
_watchers: dict[str, PruneWatcher] = {}
_watchers_lock = threading.Lock()


class PruneWatcher(threading.Thread):
    """Reports a running trial's epoch values to the sweep's pruner and stops the trial when told.
    Started by ``admit`` for an admitted trial of a sweep with a pruner."""

    def __init__(self, job_id: str, sweep_id: str, trial_id: int, number: int, spec: SweepSpec) -> None:
        super().__init__(daemon=True, name=f"prune-{job_id[:8]}")
        self.job_id = job_id
        self.sweep_id, self.trial_id, self.number, self.spec = sweep_id, trial_id, number, spec
        self.reported = 0
        self._done = threading.Event()

    def run(self) -> None:
        interval = max(0.2, get_settings().heartbeat_seconds / 2)
        while not self._done.wait(interval):
            try:
                if self.check():
                    return
            except Exception:  # a database blip: the next round tries again
                log.exception("job %s: pruning check failed", self.job_id)

    def check(self) -> bool:
        """One look; True once the trial was pruned or left the running state."""
        with session_scope() as session:
            series = {
                e: v
                for e, v in objective_series(
                    session, job_id=self.job_id, metric=self.spec.objective.metric
                ).items()
                if e >= 1
            }
            if len(series) <= self.reported:
                return False
            self.reported = len(series)
            views = load_views(session, sweep_id=self.sweep_id)
            if self.number >= len(views) or views[self.number].state != "running":
                return True
            views[self.number].intermediate = {str(e): v for e, v in series.items()}
            prune, attrs = judge(self.spec, views, self.number)
            updated = session.execute(
                update(SweepTrial)
                .where(SweepTrial.id == self.trial_id, SweepTrial.state == "running")
                .values(
                    intermediate=json_safe(views[self.number].intermediate),
                    system_attrs=attrs,
                    state="pruning" if prune else "running",
                )
            ).rowcount
            if prune and updated:
                session.execute(
                    update(Job)
                    .where(Job.id == self.job_id, Job.status == "running")
                    .values(cancel_requested=True)
                )
                log.info("job %s: pruned at epoch %d", self.job_id, max(series))
            return prune or not updated

    def stop(self) -> None:
        self._done.set()


def start_watcher(job_id: str, sweep_id: str, trial_id: int, number: int, spec: SweepSpec) -> PruneWatcher:
    watcher = PruneWatcher(job_id, sweep_id, trial_id, number, spec)
    with _watchers_lock:
        old = _watchers.pop(job_id, None)
        _watchers[job_id] = watcher
    if old:
        old.stop()
    watcher.start()
    return watcher


def is_watched(job_id: str) -> bool:
    """Whether a pruner judges this job's epoch values while it runs (its writer then commits each
    epoch's values at the epoch's end)."""
    with _watchers_lock:
        return job_id in _watchers


def stop_watcher(job_id: str) -> None:
    with _watchers_lock:
        watcher = _watchers.pop(job_id, None)
    if watcher:
        watcher.stop()


def on_task_postrun(task: Any = None, args: Any = None, **_: Any) -> None:
    if task is not None and task.name == RUN_JOB and args:
        stop_watcher(str(args[0]))


def on_process_shutdown(**_: Any) -> None:
    """A worker process that stops runs the steps it still owes before it exits, and says what its
    steps cost (benchmarks/sweep.py reads that line)."""
    if not flush_steps(timeout=10.0):
        log.warning("sweep steps still due at shutdown; the next step or GET /v1/sweeps/{id} runs them")
    if _stepper is not None and _stepper_pid == os.getpid() and _stepper.steps:
        log.info("sweep steps in this process: %d, %.3f s of CPU", _stepper.steps, _stepper.cpu_seconds)


def connect_signals() -> None:
    task_postrun.connect(on_task_postrun, weak=False)
    worker_process_shutdown.connect(on_process_shutdown, weak=False)
