"""The metric write path: batched, idempotent, NaN-safe; and the downsampling read."""

from __future__ import annotations

import math

from sqlalchemy import func, select

from models.db import session_scope
from models.metrics import Point, read_series, write_points
from models.tables import Job, MetricPoint, Project


def _job(session) -> str:
    project = Project(name=f"metrics-{id(session)}")
    session.add(project)
    session.flush()
    job = Job(project_id=project.id, spec={"data": {"dataset": "iris"}})
    session.add(job)
    session.flush()
    return job.id


def test_a_retried_batch_does_not_duplicate_rows(database: str) -> None:
    points = [Point("train/loss", step, step / 10, 1.0 / (1 + step)) for step in range(12_000)]
    with session_scope() as session:
        job_id = _job(session)
    for _ in range(2):  # the same batch sent twice, e.g. after a lost acknowledgement
        with session_scope() as session:
            write_points(session, job_id, points)
    with session_scope() as session:
        count = session.scalar(
            select(func.count()).select_from(MetricPoint).where(MetricPoint.job_id == job_id)
        )
        assert count == 12_000
        # A re-logged point replaces the old value instead of adding a row.
        write_points(session, job_id, [Point("train/loss", 5, 0.5, 42.0), Point("train/loss", 5, 0.5, 43.0)])
    with session_scope() as session:
        series = read_series(session, job_id, ["train/loss"], step_min=5, step_max=5)[0]
        assert series.values == [43.0]


def test_non_finite_values_are_stored_and_read_back_as_null(database: str) -> None:
    with session_scope() as session:
        job_id = _job(session)
        write_points(
            session, job_id, [Point("train/loss", 1, 1, math.nan), Point("train/loss", 2, 2, math.inf)]
        )
    with session_scope() as session:
        assert read_series(session, job_id)[0].values == [None, None]


def test_downsampling_keeps_the_envelope(database: str) -> None:
    with session_scope() as session:
        job_id = _job(session)
        write_points(session, job_id, [Point("x", s, s, float(s % 7)) for s in range(10_000)])
    with session_scope() as session:
        series = read_series(session, job_id, max_points=100)[0]
    assert series.downsampled and len(series.values) == 100 and series.total_points == 10_000
    assert min(series.min) == 0.0 and max(series.max) == 6.0
    assert series.steps == sorted(series.steps)
