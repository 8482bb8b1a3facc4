"""The hand-over between one job and the next in a worker process: a pool process that ended a job
takes its queue's next message itself (worker.handover), and the ended job's finishing write commits
in the transaction of the next claim (worker.lifecycle.finishing_with_next_claim). Real Postgres,
real Redis."""

from __future__ import annotations

import redis
from sqlalchemy import select, update

from dispatch.reaper import _job_of
from models.db import session_scope
from models.tables import Job, Project, new_id
from tests.conftest import REDIS_URL, RUN_ID
from worker import handover
from worker.celery_app import RUN_JOB, app
from worker.lifecycle import claim, finish, finishing_with_next_claim, when_finished


def _queued_jobs(n: int) -> list[str]:
    """n queued jobs, oldest first, in a project of their own (a claim may run another queued job of
    the same project whose turn it is)."""
    with session_scope() as session:
        project = Project(name=f"handover-{new_id()[:8]}")
        session.add(project)
        session.flush()
        jobs = [Job(project_id=project.id, spec={"data": {"dataset": "iris"}}) for _ in range(n)]
        for job in jobs:
            session.add(job)
            session.flush()
        return [job.id for job in jobs]


def _status(job_id: str) -> str:
    with session_scope() as session:
        return session.scalar(select(Job.status).where(Job.id == job_id))


def test_a_finishing_write_commits_with_the_next_claim(token: str) -> None:
    a, b = _queued_jobs(2)
    after_a: list[str] = []
    with finishing_with_next_claim():
        first = claim(a)
        assert first is not None and first.job_id == a
        finish(first, "succeeded")
        when_finished(lambda: after_a.append(_status(a)))
        # Nothing written yet: the write waits for this thread's next claim.
        assert _status(a) == "running" and after_a == []
        second = claim(b)
        assert second is not None and second.job_id == b
        # One transaction: a is finished, b running, and what waited for a's write saw it.
        assert _status(a) == "succeeded" and _status(b) == "running" and after_a == ["succeeded"]
        finish(second, "failed", error="boom")
        assert _status(b) == "running"
    # Nothing claimed after b: its write commits alone when the block ends.
    assert _status(b) == "failed"
    with session_scope() as session:
        assert session.get(Job, b).error == "boom"


def test_a_waiting_write_whose_lease_was_lost_writes_nothing_and_the_claim_goes_on(token: str) -> None:
    a, b = _queued_jobs(2)
    with finishing_with_next_claim():
        first = claim(a)
        assert first is not None
        finish(first, "succeeded")
        with session_scope() as session:  # another attempt took the job over meanwhile
            session.execute(update(Job).where(Job.id == a).values(attempt_token=new_id()))
        second = claim(b)
        assert second is not None and second.job_id == b
    assert _status(a) == "running"  # the other attempt's job, untouched
    assert _status(b) == "running"


def test_outside_the_block_a_finish_is_written_at_once(token: str) -> None:
    (a,) = _queued_jobs(1)
    first = claim(a)
    assert first is not None
    finish(first, "succeeded")
    assert _status(a) == "succeeded"


def _queue(label: str) -> str:
    return f"saddle-test-handover-{label}-{RUN_ID}"


def _unacked_jobs(client: redis.Redis) -> set[str]:
    """Job ids of the job messages in Redis's unacked set (any worker's)."""
    return {job for job in map(_job_of, client.hvals("unacked")) if job}


def test_a_process_runs_its_queue_s_next_messages_until_one_runs_nothing() -> None:
    queue = _queue("chain")
    client = redis.Redis.from_url(REDIS_URL)
    client.delete(queue)
    jobs = [f"{RUN_ID}-{i}" for i in range(4)]
    for job_id in jobs:
        app.send_task(RUN_JOB, args=[job_id], queue=queue)
    ran: list[str] = []

    def run(job_id: str) -> str:
        ran.append(job_id)
        return "skipped" if job_id == jobs[2] else "succeeded"

    try:
        assert handover.run_following({RUN_JOB: run}, lambda: False, queue=queue) == 3
        assert ran == jobs[:3]  # oldest first; the third ran nothing, so Celery gets the slot back
        assert client.llen(queue) == 1  # the fourth waits for a delivery
        assert not set(jobs) & _unacked_jobs(client)  # each one taken was acked
    finally:
        client.delete(queue)


def test_a_foreign_message_goes_back_to_its_queue_and_stops_the_chain() -> None:
    queue = _queue("foreign")
    client = redis.Redis.from_url(REDIS_URL)
    client.delete(queue)
    app.send_task("saddle.something_else", args=["x"], queue=queue)
    ran: list[str] = []
    try:
        assert handover.run_following({RUN_JOB: ran.append}, lambda: False, queue=queue) == 0
        assert ran == [] and client.llen(queue) == 1
        assert handover.run_following({RUN_JOB: ran.append}, lambda: True, queue=queue) == 0  # stopping
    finally:
        client.delete(queue)


def test_an_empty_queue_ends_the_chain_at_once() -> None:
    queue = _queue("empty")
    redis.Redis.from_url(REDIS_URL).delete(queue)
    assert handover.run_following({RUN_JOB: lambda _: "succeeded"}, lambda: False, queue=queue) == 0
