"""Alembic creates exactly the tables the models describe."""

from __future__ import annotations

import uuid

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from migrations import run_upgrade
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
            "metric_points",
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
