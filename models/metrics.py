"""The metric write and read path, shared by the worker, the API and the benchmarks.

Writes are one multi-row statement per batch and upserts on (job, name, step): a batch that is
retried, or re-logged by a resumed attempt, replaces its rows instead of duplicating them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from models.tables import MetricPoint

# Stay well below the bind-parameter limits (Postgres 65,535; SQLite 32,766) with 4 columns a row.
ROWS_PER_STATEMENT = 5_000


@dataclass(frozen=True, slots=True)
class Point:
    name: str
    step: int
    epoch: float
    value: float


def _upsert(session: Session):
    dialect = session.get_bind().dialect.name
    module = postgresql if dialect == "postgresql" else sqlite
    stmt = module.insert(MetricPoint)
    return stmt.on_conflict_do_update(
        index_elements=["job_id", "name", "step"],
        set_={"value": stmt.excluded.value, "epoch": stmt.excluded.epoch},
    )


def write_points(session: Session, job_id: str, points: Sequence[Point]) -> int:
    """Upsert points in multi-row statements; returns how many were sent."""
    for start in range(0, len(points), ROWS_PER_STATEMENT):
        chunk = points[start : start + ROWS_PER_STATEMENT]
        rows = _dedupe([(p.name, p.step, p.epoch, float(p.value)) for p in chunk])
        stmt = _upsert(session).values(
            [{"job_id": job_id, "name": n, "step": s, "epoch": e, "value": v} for n, s, e, v in rows]
        )
        session.execute(stmt)
    return len(points)


def _dedupe(rows: list[tuple]) -> list[tuple]:
    # One statement may not touch a row twice (Postgres refuses); the last value of a key wins.
    seen: dict[tuple[str, int], tuple] = {}
    for row in rows:
        seen[(row[0], row[1])] = row
    return list(seen.values())


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
    stmt = stmt.order_by(MetricPoint.name, MetricPoint.step)
    rows = session.execute(stmt).all()
    grouped: dict[str, list[tuple[int, float, float]]] = {}
    for name, step, epoch, value in rows:
        grouped.setdefault(name, []).append((step, epoch, value))
    return [_to_series(name, pts, max_points) for name, pts in grouped.items()]


def _json_float(value: float) -> float | None:
    return value if np.isfinite(value) else None


def _to_series(name: str, pts: list[tuple[int, float, float]], max_points: int) -> Series:
    arr = np.asarray(pts, dtype=np.float64)
    steps, epochs, values = arr[:, 0], arr[:, 1], arr[:, 2]
    if len(pts) <= max_points:
        return Series(
            name,
            steps.astype(np.int64).tolist(),
            epochs.tolist(),
            [_json_float(v) for v in values],
            len(pts),
            False,
        )
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
        [_json_float(v) for v in mean_v],
        n,
        True,
        [_json_float(v) for v in lo],
        [_json_float(v) for v in hi],
    )
