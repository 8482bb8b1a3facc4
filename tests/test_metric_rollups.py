"""Downsampled reads of long series from the rollup cache (Postgres): the same answer as the raw
points, and never a stale one after appends, rewrites or a resumed attempt's delete_after."""

from __future__ import annotations

import warnings

import numpy as np
from sqlalchemy import func, select

from models.db import session_scope
from models.metrics import (
    RAW_ONLY_POINTS,
    Point,
    delete_after,
    read_series,
    sorted_block,
    write_blocks,
    write_points,
)
from models.tables import Job, MetricRollup, Project

N = 200_000  # steps of the long series: 2,000 points take rollups 64 steps wide (100 steps a point)


def _job_with_series(label: str) -> str:
    """A job whose 'train/batch_loss' holds N smooth points (one NaN stretch) and whose 'val/loss'
    holds 50, written as whole arrays: the point-by-point write path is exercised below."""
    with session_scope() as session:
        project = Project(name=f"rollups-{label}-{id(session)}")
        session.add(project)
        session.flush()
        job = Job(project_id=project.id, spec={"data": {"dataset": "iris"}})
        session.add(job)
        session.flush()
        steps = np.arange(N)
        values = np.where((steps >= 5000) & (steps <= 5099), np.nan, np.sin(steps / 20000.0))
        write_blocks(session, job.id, [sorted_block("train/batch_loss", steps, steps / 100.0, values)])
        write_points(session, job.id, [Point("val/loss", 4000 * e, e, 1 / (1 + e)) for e in range(50)])
        return job.id


def _reference(job_id: str, max_points: int) -> tuple[np.ndarray, np.ndarray, int, float, float]:
    """Mean step and value of max_points equal step ranges, from the raw points."""
    with session_scope() as session:
        raw = read_series(session, job_id, ["train/batch_loss"], max_points=RAW_ONLY_POINTS)[0]
    steps = np.asarray(raw.steps)
    values = np.asarray([np.nan if v is None else v for v in raw.values])
    group = (steps - steps[0]) * max_points // (steps[-1] - steps[0] + 1)
    mean_step = np.array([steps[group == g].mean() for g in np.unique(group)])
    with warnings.catch_warnings():  # a range of NaN only has no mean
        warnings.simplefilter("ignore", RuntimeWarning)
        mean_value = np.array([np.nanmean(values[group == g]) for g in np.unique(group)])
    return mean_step, mean_value, len(steps), float(np.nanmin(values)), float(np.nanmax(values))


def _read(job_id: str, **kw):  # noqa: ANN202
    with session_scope() as session:
        return read_series(session, job_id, ["train/batch_loss"], **kw)[0]


def _rollup_rows(job_id: str) -> int:
    with session_scope() as session:
        return session.scalar(
            select(func.count()).select_from(MetricRollup).where(MetricRollup.job_id == job_id)
        )


def test_long_series_downsample_from_rollups_like_the_raw_points(database: str) -> None:
    job_id = _job_with_series("same")
    first = _read(job_id)  # fills the rollups
    assert _rollup_rows(job_id) > 0
    second = _read(job_id)  # served from them
    assert (first.steps, first.values, first.min, first.max) == (
        second.steps,
        second.values,
        second.min,
        second.max,
    )

    mean_step, mean_value, total, lo, hi = _reference(job_id, 2000)
    assert second.downsampled and second.total_points == total == N
    assert 1900 <= len(second.values) <= 2000 and second.steps == sorted(second.steps)
    assert (
        min(v for v in second.min if v is not None) == lo
        and max(v for v in second.max if v is not None) == hi
    )
    # Whole 64-step buckets instead of single steps decide which range a point falls in: the curve
    # is the same one to within what a bucket's width changes on a smooth series.
    got = np.array([np.nan if v is None else v for v in second.values])
    expected = np.interp(second.steps, mean_step, mean_value)
    assert np.nanmax(np.abs(got - expected)) < 0.01
    # The NaN stretch stays out of the means and envelopes; a bucket of NaN only would be null.
    assert all(v is None or np.isfinite(v) for v in second.values + second.min + second.max)

    # A step range and another resolution, and the short series of the same job alongside.
    part = _read(job_id, step_min=12_345, step_max=150_000, max_points=500)
    assert part.total_points == 150_000 - 12_345 + 1 and len(part.values) <= 500
    assert part.steps[0] >= 12_345 and part.steps[-1] <= 150_000
    with session_scope() as session:
        both = read_series(session, job_id, max_points=100)
    assert [s.name for s in both] == ["train/batch_loss", "val/loss"]
    assert both[0].total_points == N and len(both[0].values) <= 100 and not both[1].downsampled


def test_writes_and_delete_after_never_leave_a_stale_rollup(database: str) -> None:
    job_id = _job_with_series("stale")
    _read(job_id)
    # Appended points count at once (the newest steps are read raw until their buckets fill).
    with session_scope() as session:
        write_points(session, job_id, [Point("train/batch_loss", N + k, 0.0, 5.0) for k in range(300)])
    appended = _read(job_id)
    assert appended.total_points == N + 300 and max(appended.max) == 5.0

    # Old points written again with other values: the rollups over them go with the write.
    with session_scope() as session:
        write_points(session, job_id, [Point("train/batch_loss", s, 0.0, -3.0) for s in range(0, 20_000)])
    rewritten = _read(job_id)
    assert all(v == -3.0 for s, v in zip(rewritten.steps, rewritten.values, strict=True) if s < 19_000)

    # A resumed attempt drops what followed its checkpoint and logs it again.
    with session_scope() as session:
        delete_after(session, job_id, 100_000)
    assert _read(job_id).total_points == 100_001
    with session_scope() as session:
        write_points(
            session, job_id, [Point("train/batch_loss", s, 0.0, 7.0) for s in range(100_001, 160_000)]
        )
    resumed = _read(job_id)
    assert resumed.total_points == 160_000
    assert all(v == 7.0 for s, v in zip(resumed.steps, resumed.values, strict=True) if s > 100_200)
    assert all(v != 7.0 for s, v in zip(resumed.steps, resumed.values, strict=True) if s < 99_800)


def test_no_fill_while_history_is_being_rewritten(database: str) -> None:
    """delete_after holds the job's rollup lock until it commits: a read meanwhile fills nothing
    (it answers from the points it can see), and the next read fills from the shortened series."""
    job_id = _job_with_series("locked")
    with session_scope() as rewriting:
        delete_after(rewriting, job_id, 150_000)
        during = _read(job_id)
        assert during.total_points == N  # the rewrite is not committed yet
        assert _rollup_rows(job_id) == 0
    after = _read(job_id)
    assert after.total_points == 150_001 and _rollup_rows(job_id) > 0
    assert after.steps[-1] <= 150_000
