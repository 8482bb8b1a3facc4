"""The worker's metric writer (worker.metric_writer): points leave the training thread through a
bounded queue, a flush makes everything handed over durable, an error in the writer is raised on
the training thread, and points a broken connection may have lost are sent again, never twice."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest
from sqlalchemy import select, text, update

from models.db import session_scope
from models.metrics import Point, load_blocks
from models.spec import JobSpec
from models.tables import Job, MetricChunk, Project, new_id
from worker.lifecycle import Claim, LeaseLost
from worker.metric_writer import MetricWriter


def _claim(label: str) -> Claim:
    """A running job held by a made-up attempt, as a worker's claim leaves it."""
    spec = {"data": {"dataset": "iris"}}
    with session_scope() as session:
        project = Project(name=f"writer-{label}-{new_id()[:8]}")
        session.add(project)
        session.flush()
        job = Job(project_id=project.id, spec=spec, status="running", attempts=1, attempt_token=new_id())
        session.add(job)
        session.flush()
        return Claim(job.id, job.attempt_token or "", 1, JobSpec.model_validate(spec), project.id)


@pytest.fixture(autouse=True)
def _jobs_end() -> Iterator[None]:
    """The made-up running jobs end with their test: left running, they would hold the projects'
    fair share (dispatch.fairness) and the reaper's attention for the rest of the session."""
    yield
    with session_scope() as session:
        session.execute(
            update(Job)
            .where(Job.project_id.in_(select(Project.id).where(Project.name.like("writer-%"))))
            .values(status="cancelled")
        )


def _points(first: int, count: int) -> list[Point]:
    return [Point(name, s, s / 10, s / 2) for s in range(first, first + count) for name in ("a", "b")]


def _stored(job_id: str) -> dict[str, np.ndarray]:
    with session_scope() as session:
        return {block.name: block.steps for _, block in load_blocks(session, [job_id])}


def test_flush_stores_every_point_once_through_a_full_queue(database: str) -> None:
    claim = _claim("flush")
    writer = MetricWriter(claim, batch_points=100, queue_batches=1)  # the trainer waits at once
    for first in range(0, 5_000, 50):
        writer.log(_points(first, 50))
    writer.progress({"epoch": 1})
    writer.flush()
    stored = _stored(claim.job_id)
    assert {name: steps.tolist() for name, steps in stored.items()} == {
        "a": list(range(5_000)),
        "b": list(range(5_000)),
    }
    writer.log(_points(5_000, 10))  # after a flush the writer goes on
    writer.close()
    assert len(_stored(claim.job_id)["a"]) == 5_010
    with session_scope() as session:
        assert session.get(Job, claim.job_id).progress == {"epoch": 1}


def test_an_error_in_the_writer_is_raised_on_the_training_thread(database: str) -> None:
    claim = _claim("lease")
    with session_scope() as session:  # another attempt took the job
        session.get(Job, claim.job_id).attempt_token = new_id()
    writer = MetricWriter(claim, batch_points=10, queue_batches=2)
    writer.log(_points(0, 10))
    with pytest.raises(LeaseLost):
        writer.flush()
    with pytest.raises(LeaseLost):  # and at every later hand-over: nothing is dropped silently
        for first in range(10, 10_000, 10):
            writer.log(_points(first, 10))
    writer.abandon()


def test_points_a_broken_connection_may_have_lost_are_sent_again(database: str) -> None:
    """Between flushes batches commit without waiting for the WAL flush; if the writer's connection
    breaks (Postgres restarted), those may be gone. Simulated: the points are deleted and the
    writer's backend terminated; the next batch's retry sends them again."""
    claim = _claim("resend")
    writer = MetricWriter(claim, batch_points=20, queue_batches=4)
    writer.log(_points(0, 10))  # one batch, committed asynchronously
    deadline = time.monotonic() + 30
    while len(_stored(claim.job_id).get("a", [])) < 10:
        assert time.monotonic() < deadline, "the first batch was never committed"
        time.sleep(0.05)
    with session_scope() as session:
        session.execute(MetricChunk.__table__.delete().where(MetricChunk.job_id == claim.job_id))
        terminated = session.execute(
            text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = :name"),
            {"name": writer.application_name},
        ).all()
        assert terminated == [(True,)]
    writer.log(_points(10, 10))
    writer.close()
    stored = _stored(claim.job_id)
    assert stored["a"].tolist() == stored["b"].tolist() == list(range(20))


def _row(job_id: str) -> tuple:
    with session_scope() as session:
        job = session.get(Job, job_id)
        return job.heartbeat_at, job.progress


def test_a_resumed_attempt_re_logging_stored_steps_replaces_them(database: str) -> None:
    """The writer's one-statement append leaves out a series whose steps are stored already; they
    are merged in the same transaction: the new values win and no step is stored twice."""
    claim = _claim("relog")
    writer = MetricWriter(claim, batch_points=100, queue_batches=4)
    writer.log(_points(0, 300))
    writer.flush()
    writer.log([Point(name, s, s / 10, -1.0) for s in range(150, 400) for name in ("a", "b")])
    writer.progress({"epoch": 2})
    writer.close()
    with session_scope() as session:
        stored = {block.name: block for _, block in load_blocks(session, [claim.job_id])}
    for block in stored.values():
        assert block.steps.tolist() == list(range(400))
        assert block.values.tolist() == [s / 2 for s in range(150)] + [-1.0] * 250
    assert _row(claim.job_id)[1] == {"epoch": 2}


def test_a_stale_attempt_token_writes_nothing_in_the_single_statement(database: str) -> None:
    """append_fenced checks the fence in the same statement as the append: with another attempt's
    token neither the points nor the heartbeat nor the progress change, and the caller is told."""
    from models.db import get_engine
    from models.metrics import append_fenced, blocks_of
    from models.tables import utcnow

    if get_engine().dialect.name != "postgresql":
        pytest.skip("the one-statement write is Postgres's")
    claim = _claim("fence")
    before = _row(claim.job_id)
    with get_engine().connect() as conn:
        held, clashing = append_fenced(
            conn, claim.job_id, new_id(), blocks_of(_points(0, 50)), utcnow(), {"epoch": 9}
        )
        conn.commit()
        assert (held, clashing) == (False, [])
        held, _ = append_fenced(conn, claim.job_id, new_id(), [], utcnow(), {"epoch": 9})  # progress alone
        conn.commit()
        assert not held
    assert _stored(claim.job_id) == {}
    assert _row(claim.job_id) == before
    with get_engine().connect() as conn:  # the attempt's own token writes both
        held, clashing = append_fenced(
            conn, claim.job_id, claim.token, blocks_of(_points(0, 50)), utcnow(), {"epoch": 1}
        )
        conn.commit()
    assert (held, clashing) == (True, [])
    assert _stored(claim.job_id)["a"].tolist() == list(range(50))
    assert _row(claim.job_id)[1] == {"epoch": 1}


def test_a_progress_only_hand_over_of_a_stale_attempt_is_refused(database: str) -> None:
    claim = _claim("stale-progress")
    with session_scope() as session:
        session.get(Job, claim.job_id).attempt_token = new_id()
    writer = MetricWriter(claim, batch_points=10, queue_batches=2, progress_seconds=0)
    writer.progress({"epoch": 1})
    with pytest.raises(LeaseLost):
        writer.flush()
    writer.abandon()
    assert _row(claim.job_id)[1] != {"epoch": 1}
