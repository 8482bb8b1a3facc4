"""The reaper: no job is lost when a worker or the broker dies.

Postgres is the source of truth and Redis only carries messages, so the reaper repairs the broker
from the database:
- a *running* job whose heartbeat is older than ``stale_after_seconds`` lost its worker (kill -9, a
  dead machine): it goes back to *queued* with its attempt token cleared — which fences out the old
  worker if it ever comes back — and is enqueued again; the next attempt resumes from its newest
  checkpoint, and after ``max_attempts`` such losses the job is failed with the reason;
- when the Redis server restarted (its run_id changed; it keeps nothing on disk), every *queued*
  job is enqueued again. A duplicate message is harmless: a delivery that finds its job running
  elsewhere or finished does nothing;
- a message that a worker took but never claimed (it died between receiving the message and
  claiming the job) sits in Redis's unacked set until the visibility timeout, days away, while its
  job stays *queued*: once it is older than ``stale_after_seconds`` it goes back on its queue.

It runs as a thread in each API process (conditional UPDATEs make several reapers safe) and as the
``saddle reaper`` command. The module imports no torch.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from datetime import timedelta

import redis
from sqlalchemy import select, update

from dispatch import fairness
from models.db import session_scope
from models.settings import get_settings
from models.tables import Job, utcnow
from sweeps.scheduler import step_idle_sweeps
from worker.celery_app import RUN_JOB, TASK_FOR_KIND, app, enqueue_job

log = logging.getLogger("saddle.reaper")


def requeue_stale_running() -> list[str]:
    cutoff = utcnow() - timedelta(seconds=get_settings().stale_after_seconds)
    with session_scope() as session:
        ids = session.execute(
            update(Job)
            .where(Job.status == "running", Job.heartbeat_at < cutoff)
            .values(status="queued", attempt_token=None, heartbeat_at=None)
            .returning(Job.id, Job.kind, Job.queue)
        ).all()
    for job_id, kind, queue in ids:
        log.warning("job %s: worker lost (heartbeat older than cutoff); re-queued", job_id)
        _enqueue(job_id, kind, queue)
    return [job_id for job_id, _, _ in ids]


def requeue_all_queued() -> int:
    with session_scope() as session:
        # Parked jobs had no message; now every queued job has one again, and a parked one is told
        # to wait again by its claim if its project still runs its quota.
        session.execute(update(Job).where(Job.status == "queued").values(parked_at=None))
        rows = session.execute(select(Job.id, Job.kind, Job.queue).where(Job.status == "queued")).all()
    for job_id, kind, queue in rows:
        _enqueue(job_id, kind, queue)
    return len(rows)


def _enqueue(job_id: str, kind: str, queue: str | None) -> None:
    try:
        enqueue_job(job_id, kind, queue)  # its own pool's queue; a study to its own task
    except Exception:  # the broker is away: the next round tries again
        log.exception("could not enqueue job %s", job_id)


def _job_of(raw: bytes | None) -> str | None:
    """The job id of a Celery job message as kombu keeps it in the unacked hash, else None."""
    try:
        message = json.loads(raw)[0]
        if message["headers"].get("task") not in (RUN_JOB, *TASK_FOR_KIND.values()):
            return None
        body = message["body"]
        if message["properties"].get("body_encoding") == "base64":
            body = base64.b64decode(body)
        return str(json.loads(body)[0][0])
    except Exception:
        return None


def requeue_unclaimed_deliveries() -> int:
    """Put back on their queue the job messages that a worker reserved more than
    ``stale_after_seconds`` ago without ever claiming their job (still *queued*): that worker died
    with the message in hand (kill -9 between receiving and claiming, or a message prefetched behind
    a running job). Left alone, kombu would restore them only after the visibility timeout."""
    settings = get_settings()
    if not settings.broker_url.startswith(("redis://", "rediss://")):
        return 0
    cutoff = time.time() - settings.stale_after_seconds
    restored = 0
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        client = channel.client
        tags = client.zrange(channel.unacked_index_key, 0, cutoff, byscore=True)
        held: dict[str, list[bytes]] = {}
        for tag in tags:
            job_id = _job_of(client.hget(channel.unacked_key, tag))
            if job_id:
                held.setdefault(job_id, []).append(tag)
        if not held:
            return 0
        with session_scope() as session:
            queued = session.scalars(select(Job.id).where(Job.id.in_(held), Job.status == "queued")).all()
        for job_id in queued:
            for tag in held[job_id]:
                channel.qos.restore_by_tag(tag, client=client)  # atomic: a second reaper finds nothing
                restored += 1
            log.warning("job %s: its message was held by a lost worker; back on the queue", job_id)
    return restored


def broker_identity() -> str | None:
    """Redis's run_id changes on every restart; other brokers keep their messages on disk."""
    url = get_settings().broker_url
    if not url.startswith(("redis://", "rediss://")):
        return None
    try:
        return str(redis.Redis.from_url(url, socket_timeout=2).info("server")["run_id"])
    except Exception:
        return None


class Reaper(threading.Thread):
    def __init__(self, interval: float | None = None) -> None:
        super().__init__(daemon=True, name="saddle-reaper")
        self.interval = interval if interval is not None else get_settings().reaper_seconds
        self._stop_event = threading.Event()
        self._broker_id: str | None = None

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            try:
                self.once()
            except Exception:  # the database is away: try again next round
                log.exception("reaper round failed")

    def once(self) -> None:
        requeue_stale_running()
        # Parked jobs whose project is below its running quota again (a job's end normally sends
        # them; its worker may have died first), and sweeps that could not launch while their
        # project's queue was full.
        fairness.release()
        step_idle_sweeps()
        try:
            requeue_unclaimed_deliveries()
        except Exception as exc:  # the broker is away: the next round looks again
            log.warning("could not look at unacked messages: %s: %s", type(exc).__name__, exc)
        current = broker_identity()
        if current and self._broker_id and current != self._broker_id:
            log.warning("broker restarted (run_id changed); re-enqueued %d queued jobs", requeue_all_queued())
        self._broker_id = current or self._broker_id

    def stop(self) -> None:
        self._stop_event.set()
