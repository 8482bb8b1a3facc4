"""Alembic creates exactly the tables the models describe, and moves existing metric points into chunks."""

from __future__ import annotations

import math
import uuid

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.orm import Session

from migrations import run_upgrade
from models.metrics import CHUNK_POINTS, read_series
from models.tables import Base
from tests.conftest import create_database, drop_database


def test_upgrade_on_empty_postgres_matches_the_models() -> None:
    name = f"saddle_migr_{uuid.uuid4().hex[:8]}"
    url = create_database(name)
    try:
        run_upgrade(url)
        engine = create_engine(url)
        with engine.connect() as conn:
            diff = compare_metadata(
                MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
            )
            tables = set(inspect(conn).get_table_names())
        engine.dispose()
        assert diff == []
        assert {
            "jobs",
            "metric_chunks",
            "checkpoints",
            "spectra",
            "diagnoses",
            "datasets",
            "sweeps",
        } <= tables
    finally:
        from models.db import _engines

        for key in [k for k in _engines if k[1] == url]:
            _engines.pop(key).dispose()
        drop_database(name)


def test_upgrade_on_sqlite_matches_the_models(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    run_upgrade(url)
    engine = create_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
def test_metric_points_move_into_chunks(dialect: str, tmp_path) -> None:
    """0009: every point of metric_points lands in exactly one chunk, in step order, NaN and ±inf
    included (NULL is NaN on SQLite), long series split into CHUNK_POINTS blocks."""
    name = f"saddle_migr_{uuid.uuid4().hex[:8]}"
    url = create_database(name) if dialect == "postgresql" else f"sqlite:///{tmp_path / 'm.db'}"
    engine = create_engine(url)
    try:
        run_upgrade(url, "0008_worker_architectures")
        long = CHUNK_POINTS + 10
        with engine.begin() as conn:
            conn.execute(
                text("INSERT INTO metric_points VALUES (:j, :n, :s, :e, :v)"),
                [
                    {"j": "a" * 32, "n": "train/batch_loss", "s": s, "e": s / 10, "v": s / 2}
                    for s in range(long)
                ]
                + [
                    {
                        "j": "a" * 32,
                        "n": "val/loss",
                        "s": 7,
                        "e": 1,
                        "v": None if dialect == "sqlite" else math.nan,
                    },
                    {"j": "a" * 32, "n": "val/loss", "s": 3, "e": 0.5, "v": math.inf},
                    {"j": "b" * 32, "n": "val/loss", "s": 1, "e": 0.1, "v": -1.0},
                ],
            )
        run_upgrade(url)
        with Session(engine) as session:
            a = {s.name: s for s in read_series(session, "a" * 32, max_points=10**9)}
            b = read_series(session, "b" * 32)
            chunks = session.execute(
                text("SELECT n FROM metric_chunks ORDER BY job_id, name, first_step")
            ).all()
        assert a["train/batch_loss"].steps == list(range(long))
        assert a["train/batch_loss"].values == [s / 2 for s in range(long)]
        assert a["val/loss"].steps == [3, 7] and a["val/loss"].values == [None, None]  # inf, NaN
        assert [(s.steps, s.values) for s in b] == [([1], [-1.0])]
        assert [n for (n,) in chunks] == [CHUNK_POINTS, 10, 2, 1]
        assert "metric_points" not in inspect(engine).get_table_names()
    finally:
        engine.dispose()
        if dialect == "postgresql":
            drop_database(name)


def test_metric_chunk_arrays_are_compressed_with_lz4_where_postgres_has_it(database: str) -> None:
    """0010: the packed arrays use lz4 (pglz cost most of a 1,000-point batch's insert); a server
    without lz4 keeps pglz and the upgrade still succeeds."""
    from models.db import get_engine

    with get_engine().connect() as conn:
        try:
            conn.execute(text("SET LOCAL default_toast_compression = lz4"))
        except Exception:
            pytest.skip("this Postgres has no lz4")
        methods = conn.execute(
            text(
                "SELECT attname, attcompression FROM pg_attribute"
                " WHERE attrelid = 'metric_chunks'::regclass AND attname IN ('steps', 'epochs', 'vals')"
            )
        ).all()
    assert sorted(methods) == [("epochs", "l"), ("steps", "l"), ("vals", "l")]
