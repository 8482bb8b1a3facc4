"""Metric writes off the training thread: a bounded queue and one writer thread per job.

The trainer hands over batches of points and goes on; it blocks only when ``queue_batches`` batches
are waiting (back-pressure, so a slow database bounds memory instead of growing it). ``flush``
waits until everything handed over is committed *durably*: the recorder calls it before it
records a checkpoint (a resume from that checkpoint then re-logs exactly what is missing), before a
spectrum, on a clean stop and at the job's end. An exception in the writer is raised on the
training thread at its next hand-over or flush: the job fails or is retried as a failed write did
when writes ran inline, and no point is dropped silently.

Durability. Between flushes, batches commit with ``synchronous_commit = off`` on Postgres: the
commit returns before its WAL reaches the disk (Postgres writes it within ~0.2 s), which takes the
~3 ms disk flush off every 1,000-point batch. Such a commit can be lost if Postgres itself crashes,
so the writer keeps those points (``_unsure``) until a synchronous commit covers them (every flush,
and at least every ``DURABLE_SECONDS``), and it writes on one connection of its own: a crash breaks
that connection, the transaction's retry re-sends the unsure points with the new batch, and since a
re-sent step replaces its stored value nothing is duplicated. A crash of the worker instead loses
them together with the attempt, and the resume from the last checkpoint (durable, see above)
re-logs them.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, text

from models.db import get_engine, session_scope, with_retries
from models.jsonsafe import json_safe
from models.metrics import Point, append_fenced, blocks_of, merge_blocks, write_points
from models.tables import utcnow
from worker.lifecycle import Claim, LeaseLost, fenced_update

# At most this long between synchronous commits: bounds what a Postgres crash can take (and what the
# writer holds to re-send) to about this many seconds of points.
DURABLE_SECONDS = 1.0
# Progress alone (an epoch's end) is handed over at most this often; in between it waits for the next
# batch or flush. A transaction per short epoch cost the trainer ~8% of its CPU at batch 256.
PROGRESS_SECONDS = 0.5
# A transaction takes several waiting batches at once, up to this many points.
MAX_TRANSACTION_POINTS = 20_000
# The writer's connection commits without waiting for the WAL flush by default (set once, when it
# connects: one round trip less per batch); a commit that must be durable asks for it.
DURABLE_COMMIT = text("SET LOCAL synchronous_commit = on")


@dataclass
class _Batch:
    points: list[Point]
    progress: dict[str, Any] | None = None
    done: threading.Event | None = None  # set once committed durably (flush waits on it)
    stop: bool = False


@dataclass
class _Unsure:
    points: list[Point] = field(default_factory=list)
    since: float = field(default_factory=time.monotonic)


class WriterFailed(RuntimeError):
    """The writer was stopped because the job failed."""


class MetricWriter:
    """Writes one job attempt's points and progress on a thread of its own (see the module doc)."""

    def __init__(
        self,
        claim: Claim,
        *,
        batch_points: int,
        queue_batches: int,
        max_transaction_points: int = MAX_TRANSACTION_POINTS,
        progress_seconds: float = PROGRESS_SECONDS,
    ) -> None:
        self.claim = claim
        self.batch_points = batch_points
        self.progress_seconds = progress_seconds
        self.max_transaction_points = max_transaction_points
        self._queue: queue.Queue[_Batch] = queue.Queue(maxsize=queue_batches)
        self._buffer: list[Point] = []
        self._progress: dict[str, Any] | None = None  # the newest, not handed over yet
        self._handed_at = time.monotonic()
        self._error: BaseException | None = None
        self._unsure = _Unsure()
        self._waiting: list[_Batch] = []  # what the writer took from the queue last
        self.application_name = f"saddle-metrics-{claim.job_id}"  # job ids are hex digits
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"metrics-{claim.job_id[:8]}")
        self._thread.start()

    # ----- the training thread's side ---------------------------------------------------------

    def log(self, points: list[Point]) -> None:
        self._buffer.extend(points)
        if len(self._buffer) >= self.batch_points:
            self._hand_over()

    def progress(self, progress: dict[str, Any]) -> None:
        """The job's progress, committed with the points so far (at most every ``progress_seconds``)."""
        self._progress = progress
        if time.monotonic() - self._handed_at >= self.progress_seconds:
            self._hand_over()

    def flush(self) -> None:
        """Return once everything handed over is committed durably."""
        done = threading.Event()
        self._hand_over(done=done)
        while not done.wait(0.5):
            self._check()
        self._check()

    def close(self) -> None:
        """Flush, then stop the thread."""
        self.flush()
        self._put(_Batch([], stop=True))
        self._thread.join()

    def abandon(self) -> None:
        """Stop the thread without committing what is still queued (the job failed anyway)."""
        self._error = self._error or WriterFailed("abandoned")
        self._release([])
        with contextlib.suppress(queue.Full):  # full: the writer stops at its next turn anyway
            self._queue.put_nowait(_Batch([], stop=True))
        self._thread.join(timeout=10)

    def _hand_over(self, done: threading.Event | None = None) -> None:
        self._check()
        points, self._buffer = self._buffer, []
        progress, self._progress = self._progress, None
        self._handed_at = time.monotonic()
        if points or progress is not None or done is not None:
            self._put(_Batch(points, progress, done))

    def _put(self, batch: _Batch) -> None:
        # Blocks while the queue is full: the back-pressure; a writer that died meanwhile is raised.
        while True:
            try:
                self._queue.put(batch, timeout=0.5)
                return
            except queue.Full:
                self._check()

    def _check(self) -> None:
        # The writer's own exception (a LeaseLost, a database error past its retries), so the job
        # fails or is retried exactly as when the write ran on this thread.
        if self._error is not None:
            raise self._error

    # ----- the writer thread ------------------------------------------------------------------

    def _run(self) -> None:
        try:
            with get_engine().connect() as conn:
                if conn.dialect.name == "postgresql":  # names the connection in pg_stat_activity
                    conn.exec_driver_sql(f"SET application_name = '{self.application_name}'")
                    conn.exec_driver_sql("SET synchronous_commit = off")
                    conn.commit()
                try:
                    self._serve(conn)
                finally:  # the pooled connection goes back unnamed, and committing durably
                    self._reset(conn)
        except BaseException as exc:  # noqa: BLE001 - handed to the training thread
            self._error = self._error or exc
        finally:
            self._release(self._waiting)

    @staticmethod
    def _reset(conn: Connection) -> None:
        if conn.dialect.name != "postgresql":
            return
        try:
            conn.connection.driver_connection.autocommit = False
            conn.exec_driver_sql("RESET application_name")
            conn.exec_driver_sql("RESET synchronous_commit")
            conn.commit()
        except Exception:  # never hand the pool a connection that may still commit asynchronously,
            conn.invalidate()  # or on its own

    def _serve(self, conn: Connection) -> None:
        while self._error is None:
            waiting = self._take()
            self._waiting = waiting
            if any(b.stop for b in waiting):
                return
            self._commit(conn, waiting)
            for batch in waiting:
                if batch.done is not None:
                    batch.done.set()

    def _take(self) -> list[_Batch]:
        """The next batch and the ones waiting behind it, up to max_transaction_points."""
        batches = [self._queue.get()]
        size = len(batches[0].points)
        while size < self.max_transaction_points and not batches[-1].stop:
            try:
                batches.append(self._queue.get_nowait())
            except queue.Empty:
                break
            size += len(batches[-1].points)
        return batches

    def _release(self, waiting: list[_Batch]) -> None:
        """Wake every flush still waiting (it then sees the error) and unblock hand-overs."""
        for batch in waiting:
            if batch.done is not None:
                batch.done.set()
        while True:
            try:
                batch = self._queue.get_nowait()
            except queue.Empty:
                return
            if batch.done is not None:
                batch.done.set()

    def _commit(self, conn: Connection, batches: list[_Batch]) -> None:
        points = [p for b in batches for p in b.points]
        progress = next((b.progress for b in reversed(batches) if b.progress is not None), None)
        durable = any(b.done is not None for b in batches) or (
            time.monotonic() - self._unsure.since > DURABLE_SECONDS
        )
        retried = False

        def transaction() -> None:
            nonlocal retried
            # A retry follows a broken connection: what committed without a WAL flush may be gone.
            resend = self._unsure.points if retried else []
            retried = True
            if conn.dialect.name == "postgresql":
                self._write_pg(conn, resend + points, progress, durable=durable or bool(resend))
            else:
                with session_scope(bind=conn) as session:
                    values: dict[str, Any] = {"heartbeat_at": utcnow()}
                    if progress is not None:
                        values["progress"] = json_safe(progress)
                    fenced_update(session, self.claim, **values)
                    write_points(session, self.claim.job_id, resend + points)
            if durable or resend:
                self._unsure = _Unsure()
            else:
                self._unsure.points.extend(points)

        with_retries(transaction)

    def _write_pg(
        self, conn: Connection, points: list[Point], progress: dict[str, Any] | None, *, durable: bool
    ) -> None:
        """The fenced heartbeat (and progress) and the append in one statement (``append_fenced``),
        then the merge of any series whose steps were stored already (a resumed attempt re-logging,
        a re-sent batch). Between durable commits that statement is a transaction of its own
        (autocommit: no BEGIN and COMMIT round trips); a durable commit (``SET LOCAL``) and a merge
        run in a transaction, the merge fenced again."""
        driver = conn.connection.driver_connection
        try:
            driver.autocommit = not durable
            if durable:
                conn.execute(DURABLE_COMMIT)
            held, clashing = append_fenced(
                conn,
                self.claim.job_id,
                self.claim.token,
                blocks_of(points) if points else [],
                heartbeat_at=utcnow(),
                progress=None if progress is None else json_safe(progress),
            )
            if held and clashing and driver.autocommit:
                conn.commit()  # the appends and the beat are in; the merge gets a transaction
                driver.autocommit = False
                held, _ = append_fenced(conn, self.claim.job_id, self.claim.token, [], utcnow())
            if not held:
                raise LeaseLost(
                    f"job {self.claim.job_id}: attempt {self.claim.attempt} no longer holds the job"
                )
            merge_blocks(conn, self.claim.job_id, clashing)
            conn.commit()
        except BaseException:
            conn.rollback()  # also what a broken connection needs before the retry reconnects
            raise
