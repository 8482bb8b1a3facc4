"""The metric write path: batched, idempotent, NaN-safe; and the downsampling read."""

from __future__ import annotations

import math

import numpy as np
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from migrations import run_upgrade
from models.db import session_scope
from models.metrics import Point, load_blocks, read_series, write_points
from models.tables import Job, Project


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
        (_, stored), *others = load_blocks(session, [job_id])
        assert not others and len(stored.steps) == len(np.unique(stored.steps)) == 12_000
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


def test_sqlite_stores_nan_and_infinities_of_a_diverged_run(tmp_path) -> None:
    """The embedded default: SQLite turns NaN into NULL, which a NOT NULL column refused (a diverged
    run then failed instead of being diagnosed). NaN comes back as NaN, ±inf as themselves."""
    url = f"sqlite:///{tmp_path / 'nan.db'}"
    run_upgrade(url)
    engine = create_engine(url)
    try:
        with Session(engine) as session, session.begin():
            job_id = _job(session)
            points = [
                Point("train/loss", 1, 1, 0.5),
                Point("train/loss", 2, 2, math.nan),
                Point("train/loss", 3, 3, math.inf),
                Point("train/batch_grad_norm", 3, 3, -math.inf),
            ]
            write_points(session, job_id, points)
            write_points(session, job_id, points)  # a retried batch still replaces, never duplicates
        with Session(engine) as session:
            stored = [
                (b.name, step, value)
                for _, b in load_blocks(session, [job_id])
                for step, value in zip(b.steps.tolist(), b.values.tolist(), strict=True)
            ]
            series = {s.name: s.values for s in read_series(session, job_id)}
    finally:
        engine.dispose()
    assert [(n, s) for n, s, _ in stored] == [
        ("train/batch_grad_norm", 3),
        ("train/loss", 1),
        ("train/loss", 2),
        ("train/loss", 3),
    ]
    values = [v for _, _, v in stored]
    assert values[0] == -math.inf and values[1] == 0.5 and math.isnan(values[2]) and values[3] == math.inf
    assert series == {"train/batch_grad_norm": [None], "train/loss": [0.5, None, None]}


def test_downsampling_keeps_the_envelope(database: str) -> None:
    with session_scope() as session:
        job_id = _job(session)
        write_points(session, job_id, [Point("x", s, s, float(s % 7)) for s in range(10_000)])
    with session_scope() as session:
        series = read_series(session, job_id, max_points=100)[0]
    assert series.downsampled and len(series.values) == 100 and series.total_points == 10_000
    assert min(series.min) == 0.0 and max(series.max) == 6.0
    assert series.steps == sorted(series.steps)


def test_load_blocks_by_prefix_takes_like_wildcards_literally(database: str) -> None:
    with session_scope() as session:
        job_id = _job(session)
        names = ("tr_in/loss", "train/loss", "t%/loss", "tx/loss")
        write_points(session, job_id, [Point(name, 1, 0.1, 1.0) for name in names])
    with session_scope() as session:
        assert [b.name for _, b in load_blocks(session, [job_id], prefix="tr_")] == ["tr_in/loss"]
        assert [b.name for _, b in load_blocks(session, [job_id], prefix="t%")] == ["t%/loss"]
        assert sorted(b.name for _, b in load_blocks(session, [job_id], prefix="t")) == sorted(names)
        assert [b.name for _, b in load_blocks(session, [job_id], ["tx/loss"], "t", lo=1, hi=1)] == [
            "tx/loss"
        ]
        assert list(load_blocks(session, [job_id], ["tx/loss"], lo=2)) == []


def test_the_api_writes_a_whole_series_from_its_arrays_non_finite_as_null(database: str) -> None:
    """GET /v1/jobs/{id}/metrics serializes a series read whole straight from numpy (read_series'
    ``arrays``): the same JSON as from lists, NaN and ±inf as null; a downsampled one as before."""
    from fastapi.testclient import TestClient

    from api.app import app
    from api.auth import create_token

    with session_scope() as session:
        project, token = create_token(session, f"arrays-{id(session)}")
        job = Job(project_id=project.id, spec={"data": {"dataset": "iris"}})
        session.add(job)
        session.flush()
        job_id = job.id
        values = [0.5, math.nan, math.inf, -math.inf, 2.0]
        write_points(session, job_id, [Point("val/loss", s, s / 10, v) for s, v in enumerate(values)])
    with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as client:
        body = client.get(f"/v1/jobs/{job_id}/metrics", params={"name": "val/loss"}).json()
        short = client.get(f"/v1/jobs/{job_id}/metrics", params={"name": "val/loss", "max_points": 2}).json()
    (series,) = body["series"]
    assert series["steps"] == [0, 1, 2, 3, 4] and series["epochs"] == [0.0, 0.1, 0.2, 0.3, 0.4]
    assert series["values"] == [0.5, None, None, None, 2.0]
    assert (series["total_points"], series["downsampled"]) == (5, False)
    with session_scope() as session:  # the other callers still get lists
        assert read_series(session, job_id)[0].values == [0.5, None, None, None, 2.0]
    assert short["series"][0]["downsampled"] and len(short["series"][0]["values"]) == 2
