"""The metric write and read path, shared by the worker, the API and the benchmarks.

Writes are one multi-row statement per batch and upserts on (job, name, step): a batch that is
retried, or re-logged by a resumed attempt, replaces its rows instead of duplicating them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import delete, select, text
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import Session

from models.tables import MetricPoint

# SQLite binds one parameter per cell; stay below its limit (32,766) with 5 columns a row.
SQLITE_ROWS_PER_STATEMENT = 5_000

# Postgres: the whole batch is five array parameters, unnested server-side, so the statement text
# is constant (prepared once per connection) and no Python work grows with the number of cells.
PG_UPSERT = text(
    """
    INSERT INTO metric_points (job_id, name, step, epoch, value)
    SELECT :job_id, * FROM unnest(
        CAST(:names AS varchar[]), CAST(:steps AS bigint[]), CAST(:epochs AS float8[]), CAST(:values AS float8[])
    )
    ON CONFLICT (job_id, name, step) DO UPDATE SET value = EXCLUDED.value, epoch = EXCLUDED.epoch
    """
)


@dataclass(frozen=True, slots=True)
class Point:
    name: str
    step: int
    epoch: float
    value: float


def write_points(session: Session, job_id: str, points: Sequence[Point]) -> int:
    """Upsert points in one statement per batch; returns how many were sent."""
    if not points:
        return 0
    rows = _dedupe(points)
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            PG_UPSERT,
            {
                "job_id": job_id,
                "names": [p.name for p in rows],
                "steps": [p.step for p in rows],
                "epochs": [float(p.epoch) for p in rows],
                "values": [float(p.value) for p in rows],
            },
        )
        return len(points)
    for start in range(0, len(rows), SQLITE_ROWS_PER_STATEMENT):
        chunk = rows[start : start + SQLITE_ROWS_PER_STATEMENT]
        stmt = sqlite.insert(MetricPoint).values(
            [
                {"job_id": job_id, "name": p.name, "step": p.step, "epoch": p.epoch, "value": float(p.value)}
                for p in chunk
            ]
        )
        session.execute(
            stmt.on_conflict_do_update(
                index_elements=["job_id", "name", "step"],
                set_={"value": stmt.excluded.value, "epoch": stmt.excluded.epoch},
            )
        )
    return len(points)


def _dedupe(points: Sequence[Point]) -> list[Point]:
    # One statement may not touch a row twice (Postgres refuses); the last value of a key wins.
    seen: dict[tuple[str, int], Point] = {}
    for p in points:
        seen[(p.name, p.step)] = p
    return list(seen.values()) if len(seen) != len(points) else list(points)


def delete_after(session: Session, job_id: str, step: int) -> None:
    """Drop points logged after ``step`` (a resumed attempt re-logs them)."""
    session.execute(delete(MetricPoint).where(MetricPoint.job_id == job_id, MetricPoint.step > step))


@dataclass
class Series:
    name: str
    steps: list[int]
    epochs: list[float]
    values: list[float | None]
    total_points: int
    downsampled: bool
    min: list[float | None] | None = None
    max: list[float | None] | None = None


def read_series(
    session: Session,
    job_id: str,
    names: Iterable[str] | None = None,
    prefix: str | None = None,
    step_min: int | None = None,
    step_max: int | None = None,
    max_points: int = 2_000,
) -> list[Series]:
    stmt = select(MetricPoint.name, MetricPoint.step, MetricPoint.epoch, MetricPoint.value).where(
        MetricPoint.job_id == job_id
    )
    names = list(names or [])
    if names:
        stmt = stmt.where(MetricPoint.name.in_(names))
    if prefix:
        stmt = stmt.where(MetricPoint.name.startswith(prefix, autoescape=True))
    if step_min is not None:
        stmt = stmt.where(MetricPoint.step >= step_min)
    if step_max is not None:
        stmt = stmt.where(MetricPoint.step <= step_max)
    if session.get_bind().dialect.name == "postgresql":
        return _read_grouped(session, job_id, names, prefix, step_min, step_max, max_points)
    rows = session.execute(stmt.order_by(MetricPoint.name, MetricPoint.step)).all()
    if not rows:
        return []
    # Columns as arrays, split where the name changes (rows come sorted by name, then step).
    row_names, steps, epochs, values = zip(*rows, strict=True)
    steps_a = np.fromiter(steps, dtype=np.int64, count=len(rows))
    epochs_a = np.fromiter(epochs, dtype=np.float64, count=len(rows))
    values_a = np.fromiter(values, dtype=np.float64, count=len(rows))
    cuts = [0] + [i for i in range(1, len(row_names)) if row_names[i] != row_names[i - 1]] + [len(row_names)]
    return [
        _to_series(row_names[a], steps_a[a:b], epochs_a[a:b], values_a[a:b], max_points)
        for a, b in zip(cuts[:-1], cuts[1:], strict=True)
    ]


def _read_grouped(
    session: Session,
    job_id: str,
    names: list[str],
    prefix: str | None,
    step_min: int | None,
    step_max: int | None,
    max_points: int,
) -> list[Series]:
    """Postgres packs each series into arrays server-side and sends them in binary: one row per
    series instead of one per point, so a 10,000-point read costs a few milliseconds of Python.
    The inner ORDER BY (an index scan of the primary key) fixes the order array_agg sees."""
    where = ["job_id = %(job)s"]
    params: dict[str, Any] = {"job": job_id}
    if names:
        where.append("name = ANY(%(names)s)")
        params["names"] = names
    if prefix:
        where.append("starts_with(name, %(prefix)s)")
        params["prefix"] = prefix
    if step_min is not None:
        where.append("step >= %(step_min)s")
        params["step_min"] = step_min
    if step_max is not None:
        where.append("step <= %(step_max)s")
        params["step_max"] = step_max
    sql = (
        "SELECT name, array_agg(step), array_agg(epoch), array_agg(value) FROM "
        f"(SELECT name, step, epoch, value FROM metric_points WHERE {' AND '.join(where)} ORDER BY name, step) p "
        "GROUP BY name ORDER BY name"
    )
    raw = session.connection().connection.driver_connection
    with raw.cursor(binary=True) as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    return [
        _to_series(
            name,
            np.asarray(steps, dtype=np.int64),
            np.asarray(epochs, dtype=np.float64),
            np.asarray(values, dtype=np.float64),
            max_points,
        )
        for name, steps, epochs, values in rows
    ]


def json_floats(values: np.ndarray) -> list[float | None]:
    """NaN and infinity (a diverged run) become null: JSON has no spelling for them."""
    out = values.tolist()
    if not np.isfinite(values).all():
        out = [v if np.isfinite(v) else None for v in out]
    return out


def _to_series(
    name: str, steps: np.ndarray, epochs: np.ndarray, values: np.ndarray, max_points: int
) -> Series:
    if len(steps) <= max_points:
        return Series(name, steps.tolist(), epochs.tolist(), json_floats(values), len(steps), False)
    return downsample(name, steps, epochs, values, max_points)


def downsample(name: str, steps, epochs, values, max_points: int) -> Series:
    """Equal-count buckets: each bucket reports its mean step/value and the min and max it hides."""
    n = len(steps)
    edges = np.linspace(0, n, max_points + 1).astype(np.int64)
    counts = np.diff(edges)
    keep = counts > 0
    starts = edges[:-1][keep]
    counts = counts[keep]
    finite = np.where(np.isfinite(values), values, np.nan)
    with np.errstate(invalid="ignore"):
        mean_v = np.add.reduceat(np.nan_to_num(finite), starts) / np.maximum(
            np.add.reduceat(np.isfinite(finite).astype(np.float64), starts), 1
        )
        lo = np.fmin.reduceat(finite, starts)
        hi = np.fmax.reduceat(finite, starts)
    mean_step = np.add.reduceat(steps, starts) / counts
    mean_epoch = np.add.reduceat(epochs, starts) / counts
    return Series(
        name,
        np.rint(mean_step).astype(np.int64).tolist(),
        mean_epoch.tolist(),
        json_floats(mean_v),
        n,
        True,
        json_floats(lo),
        json_floats(hi),
    )
