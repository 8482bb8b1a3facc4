"""A worker that dies after taking a message from Redis but before claiming its job.

Found by ``benchmarks/soak.py``: the message sits in Redis's unacked set until the visibility
timeout (days) while its job stays queued, so nothing would run it. The reaper puts such messages
back on their queue once they are older than the stale cutoff. The dying worker here is a real
process that reserves the message the way Celery does (kombu, late ack) and exits without acking.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import redis
from sqlalchemy import select, update

from dispatch.reaper import _job_of, requeue_stale_running, requeue_unclaimed_deliveries
from models.db import session_scope
from models.settings import get_settings
from models.tables import Job, Project
from tests.conftest import REDIS_URL, RUN_ID, SERVICE_ENV
from worker.celery_app import RUN_JOB, app

RESERVE_AND_DIE = """
import os, sys
from worker.celery_app import app
with app.connection_for_read() as conn:
    queue = conn.SimpleQueue(sys.argv[1], no_ack=False)
    message = queue.get(timeout=20)
    print(message.delivery_tag, flush=True)
    os._exit(0)  # no ack, no clean shutdown: what kill -9 leaves behind
"""


def _insert_job(status: str = "queued") -> str:
    with session_scope() as session:
        project = session.scalars(select(Project).limit(1)).first()
        job = Job(project_id=project.id, spec={"data": {"dataset": "iris"}}, status=status)
        session.add(job)
        session.flush()
        return job.id


def _reserve_and_die(queue: str) -> str:
    env = {**os.environ, **SERVICE_ENV}
    out = subprocess.run(
        [sys.executable, "-c", RESERVE_AND_DIE, queue], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def _queued_job_ids(client: redis.Redis, queue: str) -> list[str]:
    return [_job_of(f'[{raw.decode()}, "", ""]'.encode()) for raw in client.lrange(queue, 0, -1)]


def test_a_message_held_by_a_worker_that_died_before_claiming_goes_back_on_the_queue(token: str) -> None:
    queue = f"saddle-lost-{RUN_ID}"
    client = redis.Redis.from_url(REDIS_URL)
    lost, running = _insert_job(), _insert_job()
    with session_scope() as session:  # this one was claimed: its worker's heartbeat is the reaper's cue
        session.execute(update(Job).where(Job.id == running).values(status="running"))
    tags = []
    try:
        for job_id in (lost, running):
            app.send_task(RUN_JOB, args=[job_id], queue=queue)
            tags.append(_reserve_and_die(queue))
        assert client.llen(queue) == 0
        with app.connection_for_write() as conn:
            unacked = conn.default_channel.unacked_key
        assert all(client.hexists(unacked, tag) for tag in tags)

        requeue_unclaimed_deliveries()  # freshly reserved: a live worker may be about to claim it
        assert client.llen(queue) == 0

        deadline = time.monotonic() + get_settings().stale_after_seconds + 20
        while client.llen(queue) == 0:
            assert time.monotonic() < deadline, "the lost message never went back on the queue"
            requeue_unclaimed_deliveries()  # (the session's API reapers may get there first)
            time.sleep(0.5)
        assert _queued_job_ids(client, queue) == [lost]
        assert not client.hexists(unacked, tags[0])
        assert client.hexists(unacked, tags[1])  # a claimed job's message is left to the heartbeat
    finally:
        client.delete(queue)
        with app.connection_for_write() as conn:
            channel = conn.default_channel
            for tag in tags:
                client.zrem(channel.unacked_index_key, tag)
                client.hdel(channel.unacked_key, tag)


TASK_WITH_DATABASE_AWAY = """
from celery.exceptions import Reject
from worker.tasks import run_job_task
try:
    run_job_task.run("00000000-0000-0000-0000-000000000000")
except Reject as exc:
    print("requeue" if exc.requeue else "drop", exc.reason)
else:
    print("returned")
"""


def test_a_task_that_cannot_reach_the_database_goes_back_on_its_queue() -> None:
    """A delivery whose claim outlasts the database retries is rejected with requeue, not acked:
    its job stays queued, so an acked message would leave nothing to run it."""
    env = {
        **SERVICE_ENV,
        "SADDLE_DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:9/nowhere",
        "SADDLE_DB_RETRY_ATTEMPTS": "2",
    }
    out = subprocess.run(
        [sys.executable, "-c", TASK_WITH_DATABASE_AWAY], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("requeue database unreachable"), out.stdout + out.stderr[-2000:]
    assert "retry 1 of 1" in out.stderr


def test_the_reaper_puts_a_lost_job_back_on_its_own_pools_queue() -> None:
    """Several worker pools (one SADDLE_QUEUE each) share the database: a job whose worker died
    goes back on the queue of the pool that ran it, not on the queue of whichever reaper saw it."""
    queue = f"saddle-other-pool-{RUN_ID}"
    client = redis.Redis.from_url(REDIS_URL)
    job_id = _insert_job()
    assert queue != get_settings().queue
    stale = datetime.now(UTC) - timedelta(seconds=get_settings().stale_after_seconds + 60)
    with session_scope() as session:
        session.execute(
            update(Job).where(Job.id == job_id).values(status="running", heartbeat_at=stale, queue=queue)
        )
    try:
        deadline = time.monotonic() + 30
        while job_id not in _queued_job_ids(client, queue):  # (the session's API reapers may get there first)
            assert time.monotonic() < deadline, "the job never went back on its pool's queue"
            requeue_stale_running()
            time.sleep(0.2)
        assert job_id not in _queued_job_ids(client, get_settings().queue)
    finally:
        client.delete(queue)
        with session_scope() as session:
            session.execute(update(Job).where(Job.id == job_id).values(status="cancelled"))
