"""Job state transitions, fenced by the attempt token.

A worker claims a job by giving it a fresh attempt token; every later write of that worker names the
token in its WHERE clause, so a worker that lost its claim (it stalled, the job was handed to another
worker) finds zero rows updated and stops instead of overwriting a newer attempt.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import Any

from pydantic import ValidationError
from sqlalchemy import bindparam, exists, select, update
from sqlalchemy.exc import DBAPIError, OperationalError

from dispatch import fairness
from models.budget import spec_problems
from models.db import session_scope, with_retries
from models.settings import get_settings
from models.spec import JobSpec
from models.summary import RunSummary
from models.tables import FINISHED_STATUSES, Job, Project, new_id, utcnow
from sweeps import runtime as sweeps
from worker.celery_app import enqueue_job

log = logging.getLogger("saddle.worker")


class LeaseLost(RuntimeError):
    """This worker's attempt is no longer the current one; it must stop writing."""


# A worker that is asked to stop (SIGTERM: Celery's warm shutdown) must not wait for its jobs to
# end, which can take hours: worker.tasks sets this flag in each pool process, the heartbeat turns it
# into a stop reason, and run_claimed puts the job back on its queue for another worker, which
# resumes it from its newest checkpoint. The reason starts with "lease lost" because that is how
# every job body (runner._train, timing) already recognises "stop now and write nothing more".
_shutting_down = threading.Event()
WORKER_SHUTTING_DOWN = "lease lost: this worker is shutting down; the job goes back to its queue"


def stop_for_shutdown() -> None:
    """Running jobs of this process stop at their next step and go back to their queue."""
    _shutting_down.set()


def shutting_down() -> bool:
    return _shutting_down.is_set()


class ShuttingDown(Exception):
    """A delivery reached a worker on its way out (Celery may hand it one more message while its
    pool drains): the job is not claimed, and worker.tasks puts the message back on the queue."""


@dataclass(frozen=True)
class Claim:
    """This worker's hold on a job: the attempt token that fences its writes, and the job's spec,
    validated once here for everything the attempt does."""

    job_id: str
    token: str
    attempt: int
    spec: JobSpec
    project_id: str


def heartbeat_is_fresh(job: Job) -> bool:
    if job.heartbeat_at is None:
        return False
    beat = job.heartbeat_at if job.heartbeat_at.tzinfo else job.heartbeat_at.replace(tzinfo=utcnow().tzinfo)
    return utcnow() - beat < timedelta(seconds=get_settings().stale_after_seconds)


# Asked inside the claim's transaction, the job row locked, before the job counts as started: False
# leaves it queued and skips this delivery (a sweep's trial while its sweep runs max_concurrency).
Admit = Callable[..., bool]  # admit(session, *, job) -> whether the claim may run the job


class DatabaseAway(Exception):
    """The database stayed unreachable for longer than the retries wait: the delivery must go back
    on its queue (worker.tasks rejects it with requeue), not be acked while its job stays queued."""


def claim(job_id: str, admit: Admit | None = None) -> Claim | None:
    """Take a job for this worker: ``job_id``, or the queued job whose project's turn it is (see
    dispatch.fairness; the claim names which). None when none must run here.

    A database outage is waited out; one that outlasts the retries raises DatabaseAway. This
    thread's pending finishing write (``finishing_with_next_claim``) commits in the same
    transaction, before anything else of it."""
    passed_over: list[tuple[str, str, str | None]] = []
    pending: _Finishing | None = getattr(_local, "pending", None)

    def transaction() -> Claim | None:
        passed_over.clear()
        return _claim(job_id, admit, passed_over, pending)

    try:
        taken = with_retries(transaction)
    except DBAPIError as exc:
        if not (isinstance(exc, OperationalError) or exc.connection_invalidated):
            raise
        raise DatabaseAway(str(exc).splitlines()[0]) from exc
    if pending is not None:
        _local.pending = None
        pending.done()
    for job in passed_over:  # after the commit: its message went to the job that took its turn
        fairness.resend(*job)
    return taken


# The job's row and its project's, locked in one statement (the project's for dispatch.fairness).
_JOB_AND_PROJECT = (
    select(Job)
    .join(Project, Project.id == Job.project_id)
    .where(Job.id == bindparam("b_job"))
    .with_for_update()
)


def _claim(
    job_id: str,
    admit: Admit | None = None,
    passed_over: list[tuple[str, str, str | None]] | None = None,
    pending: _Finishing | None = None,
) -> Claim | None:
    with session_scope() as session:
        if pending is None:
            job = session.execute(_JOB_AND_PROJECT, {"b_job": job_id}).scalar_one_or_none()
        else:
            job = pending.and_claim(session, job_id)
        if job is None or job.status in FINISHED_STATUSES:
            return None
        if job.status == "queued" and not job.cancel_requested:
            turn = fairness.fair_turn(session, job, project_locked=True)
            if turn is None:
                fairness.park(job)
                return None
            if turn is not job:
                if passed_over is not None:
                    passed_over.append((job.id, job.kind, job.queue))
                job = turn
        if admit is not None and not admit(session, job=job):
            return None
        now = utcnow()
        if job.cancel_requested:  # cancelled while queued: it never starts
            job.status, job.finished_at = "cancelled", now
            return None
        if job.status == "running" and heartbeat_is_fresh(job):
            return None  # a live worker holds it; this is a duplicate delivery
        if job.attempts >= get_settings().max_attempts:
            job.status, job.finished_at = "failed", now
            job.error = f"gave up after {job.attempts} attempts: each one ended with its worker lost"
            return None
        try:
            spec = JobSpec.model_validate(job.spec)
        except ValidationError as exc:  # a row the API did not write, or from an older contract
            job.status, job.finished_at = "failed", now
            first = exc.errors()[0]
            job.error = f"invalid spec: {'.'.join(map(str, first['loc']))}: {first['msg']}"
            return None
        job.attempts += 1
        job.attempt_token = new_id()
        job.status, job.heartbeat_at, job.worker = "running", now, socket.gethostname()
        job.started_at = job.started_at or now
        job.parked_at = None
        fairness.started(session, job.project_id)
        return Claim(job.id, job.attempt_token, job.attempts, spec, job.project_id)


def fenced_update(session, claim: Claim, **values: Any) -> None:  # noqa: ANN001
    """Update the job row only if this worker still holds the attempt; every write is also a beat."""
    values.setdefault("heartbeat_at", utcnow())
    result = session.execute(
        update(Job).where(Job.id == claim.job_id, Job.attempt_token == claim.token).values(**values)
    )
    if result.rowcount == 0:
        raise LeaseLost(f"job {claim.job_id}: attempt {claim.attempt} no longer holds the job")


def finish(claim: Claim, status: str, summary: RunSummary | None = None, error: str | None = None) -> None:
    """The job's last write: its status, when it ended, its summary. Within
    ``finishing_with_next_claim`` it waits for this thread's next claim and commits with it."""
    values: dict[str, Any] = {"status": status, "finished_at": utcnow(), "error": error}
    if summary is not None:
        values["summary"] = summary.as_row()
    finishing = _Finishing(claim, values)
    if getattr(_local, "deferring", False):
        write_pending()  # never two waiting
        _local.pending = finishing
        return

    def transaction() -> None:
        with session_scope() as session:
            finishing.write(session, fenced=True)

    with_retries(transaction)


# ----- the finishing write rides with the next claim
# A durable commit is a WAL flush (~4 ms on a VM's disk), and a job's finishing write was one more
# commit between one job's end and the next one's start. A worker that goes on with its queue's
# next message (worker.handover) instead writes it in the transaction of the next claim, before
# anything else of it: one commit for both. What must follow the write (sending the project's
# parked jobs, the sweep's step) waits for it (``when_finished``).
_local = threading.local()  # deferring: bool; pending: _Finishing | None
# Whether a job's project had parked jobs when its finishing write committed (job id -> bool).
_parked_at_finish: dict[str, bool] = {}
_J = Job.__table__
_PARKED = _J.alias("parked")


def _finishing_update(with_summary: bool) -> Any:
    """The finishing write, built once (a statement built per call costs more Python than its round
    trip): fenced by the attempt token, a beat too, returning whether the project has parked jobs."""
    values = {
        "status": bindparam("b_status"),
        "finished_at": bindparam("b_finished_at", type_=_J.c.finished_at.type),
        "error": bindparam("b_error", type_=_J.c.error.type),
        "heartbeat_at": bindparam("b_heartbeat_at", type_=_J.c.heartbeat_at.type),
    }
    if with_summary:
        values["summary"] = bindparam("b_summary", type_=_J.c.summary.type)
    parked = exists().where(
        _PARKED.c.project_id == _J.c.project_id,
        _PARKED.c.status == "queued",
        _PARKED.c.parked_at.is_not(None),
    )
    return (
        update(_J)
        .where(_J.c.id == bindparam("b_ended"), _J.c.attempt_token == bindparam("b_token"))
        .values(**values)
        .returning(parked.label("parked"))
    )


_FINISHING = {True: _finishing_update(True), False: _finishing_update(False)}


def _finishing_and_claim(with_summary: bool) -> Any:
    finished = _FINISHING[with_summary].cte("finished")
    return (
        select(Job, select(finished.c.parked).scalar_subquery())
        .join(Project, Project.id == Job.project_id)
        .where(Job.id == bindparam("b_job"))
        .with_for_update()
    )


_FINISHING_AND_CLAIM = {True: _finishing_and_claim(True), False: _finishing_and_claim(False)}


@dataclass
class _Finishing:
    claim: Claim
    values: dict[str, Any]
    then: list[Callable[[], None]] = field(default_factory=list)

    def params(self) -> dict[str, Any]:
        params = {f"b_{key}": value for key, value in self.values.items()}
        params.update(b_ended=self.claim.job_id, b_token=self.claim.token, b_heartbeat_at=utcnow())
        return params

    def write(self, session, fenced: bool = False) -> None:  # noqa: ANN001
        """The fenced update, noting whether the project has parked jobs. A lost lease raises
        LeaseLost when ``fenced``, else it is logged (the next claim goes on)."""
        row = session.connection().execute(_FINISHING["summary" in self.values], self.params()).first()
        self.written(row[0] if row else None, fenced)

    def written(self, parked: bool | None, fenced: bool = False) -> None:
        """What the write returned: whether the project has parked jobs, None if the lease was lost."""
        if parked is None:
            lost = LeaseLost(f"job {self.claim.job_id}: attempt {self.claim.attempt} no longer holds the job")
            if fenced:
                raise lost
            log.warning("%s; its end is not recorded", lost)
            return
        _parked_at_finish[self.claim.job_id] = bool(parked)

    def and_claim(self, session, job_id: str) -> Job | None:  # noqa: ANN001
        """Write this and lock the next job's row and its project's (``_JOB_AND_PROJECT``): on
        Postgres one statement, the write a data-modifying CTE (the statements after it see it)."""
        if session.get_bind().dialect.name != "postgresql":
            self.write(session)
            return session.execute(_JOB_AND_PROJECT, {"b_job": job_id}).scalar_one_or_none()
        row = session.execute(
            _FINISHING_AND_CLAIM["summary" in self.values], {**self.params(), "b_job": job_id}
        ).first()
        if row is None:  # no such job to claim: whether the write found its lease is not known
            return None
        self.written(row[1])
        return row[0]

    def done(self) -> None:
        for then in self.then:
            then()


@contextmanager
def finishing_with_next_claim(enabled: bool = True) -> Iterator[None]:
    """Within: a job's finishing write waits for this thread's next claim (``claim``) and commits
    with it; what is still waiting at the end is written alone."""
    _local.deferring = enabled
    try:
        yield
    finally:
        _local.deferring = False
        write_pending()


def write_pending() -> None:
    """Write this thread's waiting finishing write now, alone (nothing to claim follows), then run
    what waited for it. Never raises: a write that fails leaves its job to the reaper."""
    pending: _Finishing | None = getattr(_local, "pending", None)
    if pending is None:
        return
    _local.pending = None

    def transaction() -> None:
        with session_scope() as session:
            pending.write(session)

    try:
        with_retries(transaction)
    except Exception:
        log.exception("job %s: its finishing write failed; the reaper re-queues it", pending.claim.job_id)
    pending.done()


def when_finished(then: Callable[[], None]) -> None:
    """Run ``then`` once this thread's ended job is written finished: now, or after the write that
    waits for the next claim."""
    pending: _Finishing | None = getattr(_local, "pending", None)
    if pending is None:
        then()
    else:
        pending.then.append(then)


class Heartbeat(threading.Thread):
    """Beats every few seconds and turns cancel requests, lost leases and the time limit into a stop
    reason that the training loop reads at each step without touching the database."""

    def __init__(self, claim: Claim, max_minutes: float) -> None:
        super().__init__(daemon=True, name=f"heartbeat-{claim.job_id[:8]}")
        self.claim = claim
        self.deadline = time.monotonic() + 60 * max_minutes
        self.max_minutes = max_minutes
        self.reason: str | None = None
        self._done = threading.Event()

    def run(self) -> None:
        interval = get_settings().heartbeat_seconds
        while not self._done.wait(interval):
            self.beat()

    def beat(self) -> None:
        if _shutting_down.is_set():
            self.reason = WORKER_SHUTTING_DOWN
            return
        if time.monotonic() > self.deadline:
            self.reason = f"time limit of {self.max_minutes:g} minutes (resources.max_minutes) reached"
            return
        try:
            with session_scope() as session:
                row = session.execute(
                    update(Job)
                    .where(Job.id == self.claim.job_id, Job.attempt_token == self.claim.token)
                    .values(heartbeat_at=utcnow())
                    .returning(Job.cancel_requested)
                ).first()
        except Exception:  # a database blip: keep training, the next beat retries
            return
        if row is None:
            self.reason = "lease lost: another attempt holds this job"
        elif row[0]:
            self.reason = "cancelled"

    def stop(self) -> None:
        self._done.set()


def run_claimed(job_id: str, work: Callable[[Claim, Heartbeat], str], admit: Admit | None = None) -> str:
    """Claim the job, keep a heartbeat while ``work`` runs, and report how it ended: the status
    ``work`` returns, 'skipped' when the job must not run here, or 'lease_lost' when another attempt
    took it over."""
    if _shutting_down.is_set():
        raise ShuttingDown(f"job {job_id}: not started, this worker is shutting down")
    job_claim = claim(job_id, admit)
    if job_claim is None:
        return "skipped"
    took_turn = job_claim.job_id != job_id
    if took_turn and admit is not None:
        sweeps.passed_over(job_id)  # the caller's end hook for job_id has nothing to record
    heartbeat = Heartbeat(job_claim, job_claim.spec.resources.max_minutes)
    heartbeat.start()
    try:
        status = refuse_over_budget(job_claim) or work(job_claim, heartbeat)
    except LeaseLost as exc:
        if _shutting_down.is_set() and hand_back(job_claim):
            return "lease_lost"  # given up rather than lost: the job is queued again
        log.warning("%s", exc)
        return "lease_lost"
    finally:
        heartbeat.stop()
        when_finished(partial(release_parked, job_claim))
    if took_turn and admit is not None:
        # The hook the caller runs for job_id, for this job.
        when_finished(partial(sweeps.on_job_finished, job_claim.job_id))
    return status


def refuse_over_budget(job_claim: Claim) -> str | None:
    """Fail the job before anything is allocated when its spec exceeds the budget (models.budget): a
    row the API did not write, or written under larger limits. None when it fits."""

    def problems() -> list[str]:
        with session_scope() as session:
            return spec_problems(session, job_claim.project_id, job_claim.spec)

    found = with_retries(problems)
    if not found:
        return None
    error = "over budget: " + "; ".join(found)
    log.warning("job %s: %s", job_claim.job_id, error)
    finish(job_claim, "failed", error=error)
    return "failed"


def release_parked(job_claim: Claim) -> None:
    """The job ended: its project's parked jobs may start, if its finishing write found any (or
    the job ended without one)."""
    if _parked_at_finish.pop(job_claim.job_id, True):
        release_safely(job_claim.project_id)


def release_safely(project_id: str) -> None:
    """A job of the project ended: its parked jobs may start (never raises; the reaper retries)."""
    try:
        fairness.release(project_id)
    except Exception:
        log.exception("could not release parked jobs of project %s", project_id)


def hand_back(claim: Claim) -> bool:
    """Queued again with its attempt token cleared (fencing out this worker) and a new message on its
    queue: the worker that takes it resumes it from its newest checkpoint as a new attempt. False
    when the lease was lost anyway."""

    def transaction() -> tuple[str, str | None] | None:
        with session_scope() as session:
            row = session.execute(
                update(Job)
                .where(Job.id == claim.job_id, Job.attempt_token == claim.token)
                .values(status="queued", attempt_token=None, heartbeat_at=None)
                .returning(Job.kind, Job.queue)
            ).first()
            return (row[0], row[1]) if row else None

    queued = with_retries(transaction)
    if queued is None:
        return False
    try:
        enqueue_job(claim.job_id, *queued)
    except Exception:  # the broker is away: the reaper re-enqueues queued jobs once it is back
        log.exception("job %s: queued again, but its message could not be sent", claim.job_id)
        return True
    log.info("job %s: handed back to its queue; this worker is shutting down", claim.job_id)
    return True
