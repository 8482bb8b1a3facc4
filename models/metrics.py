"""The metric write and read path, shared by the worker, the API and the benchmarks.

Writes are one multi-row statement per batch and upserts on (job, name, step): a batch that is
retried, or re-logged by a resumed attempt, replaces its rows instead of duplicating them.

Reads of long series on Postgres go through rollups (``metric_rollups``): per-bucket count, sums,
minimum and maximum of a series over aligned step buckets whose width is a power of two. Scanning a
1,000,000-point series costs Postgres ~0.3-1 s on a small machine whatever the query looks like;
a downsampled read instead takes the rollups of the width that gives between 1 and 2 buckets per
output point (a few thousand rows) plus the raw points the rollups do not cover yet.

The rollups are a cache. The first read that needs a width fills it, in short transactions of
``FILL_STEPS`` steps each; later reads fill only what was appended since. Only buckets that end
before the series' last step are filled, and a write deletes the rollups at or after its first step
in the same statement, so an appended or re-sent batch never leaves a stale bucket behind. Rewriting
history (``delete_after``, a resumed attempt) takes a lock that fills also take, so a fill never
races it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import delete, select, text
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import Session

from models.tables import MetricPoint, MetricRollup

# SQLite binds one parameter per cell; stay below its limit (32,766) with 5 columns a row.
SQLITE_ROWS_PER_STATEMENT = 5_000

# Postgres: the whole batch is five array parameters, unnested server-side, so the statement text
# is constant (prepared once per connection) and no Python work grows with the number of cells.
# The rollups at or after the batch's first step (of the series it writes) go in the same statement:
# the delete is an index probe that finds nothing unless a read cached that stretch.
PG_UPSERT = text(
    """
    WITH stale AS (
        DELETE FROM metric_rollups
        WHERE job_id = :job_id AND name = ANY(CAST(:series AS varchar[])) AND last_step >= :first_step
    )
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
        names = [p.name for p in rows]
        steps = [p.step for p in rows]
        session.execute(
            PG_UPSERT,
            {
                "job_id": job_id,
                "series": list(set(names)),
                "first_step": min(steps),
                "names": names,
                "steps": steps,
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
    """Drop points logged after ``step`` (a resumed attempt re-logs them), and the rollups over them.

    On Postgres the job's rollup lock is taken first, in its own statement: a fill in progress
    finishes (and this transaction's deletes then see its rows), or a fill that comes later waits
    for this transaction and sees the shortened series."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(ROLLUP_LOCK_SHARED, {"cls": ROLLUP_LOCK_CLASS, "job": job_id})
    session.execute(delete(MetricRollup).where(MetricRollup.job_id == job_id, MetricRollup.last_step > step))
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
    """The job's series (all, those in ``names``, or those starting with ``prefix``) within the step
    range, sorted by name; a series with more than ``max_points`` points comes downsampled."""
    names = list(names or [])
    if session.get_bind().dialect.name == "postgresql":
        return _read_pg(session, job_id, names, prefix, step_min, step_max, max_points)
    stmt = select(MetricPoint.name, MetricPoint.step, MetricPoint.epoch, MetricPoint.value).where(
        MetricPoint.job_id == job_id
    )
    if names:
        stmt = stmt.where(MetricPoint.name.in_(names))
    if prefix:
        stmt = stmt.where(MetricPoint.name.startswith(prefix, autoescape=True))
    if step_min is not None:
        stmt = stmt.where(MetricPoint.step >= step_min)
    if step_max is not None:
        stmt = stmt.where(MetricPoint.step <= step_max)
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


# ----- Postgres: raw reads for short series, rollups for long ones ---------------------------------
# Rollup widths are powers of two from ROLLUP_MIN_WIDTH up. A series whose step span is under
# max_points * ROLLUP_MIN_WIDTH is read raw (at most 16,000 points for 2,000) and downsampled here.
ROLLUP_MIN_WIDTH = 8
# Above this many requested points (the diagnosis reads whole series) nothing is downsampled anyway.
RAW_ONLY_POINTS = 10_000_000
# Steps aggregated per fill transaction: bounds how long a fill holds the job's rollup lock.
FILL_STEPS = 1 << 18
# A read fills first when more than this many complete buckets of its range have no rollup yet;
# fewer are read as raw points (a live job's newest steps) until they add up.
FILL_AFTER_BUCKETS = 4
# Advisory lock (class, hashtext(job_id)): fills take it exclusively, history rewrites shared.
ROLLUP_LOCK_CLASS = 0x5AD1
ROLLUP_LOCK_SHARED = text("SELECT pg_advisory_xact_lock_shared(:cls, hashtext(:job))")
NO_STEP = 1 << 62

# One name at a time, smallest first: an index probe per series, however many points each has.
NAMES_SQL = """
WITH RECURSIVE names(name) AS (
    (SELECT name FROM metric_points WHERE job_id = %(job)s ORDER BY name LIMIT 1)
  UNION ALL
    SELECT (SELECT m.name FROM metric_points m
            WHERE m.job_id = %(job)s AND m.name > names.name ORDER BY m.name LIMIT 1)
    FROM names WHERE names.name IS NOT NULL
)
SELECT name FROM names WHERE name IS NOT NULL
"""

# Per series: first and last step in the range, the number of points there counted up to a cap (only
# when the span could hold more than max_points), and the series' last step overall.
PROBE_SQL = """
SELECT s.name, b.first, b.last,
       CASE WHEN b.last - b.first + 1 > %(max_points)s THEN (
           SELECT count(*) FROM (
               SELECT 1 FROM metric_points
               WHERE job_id = %(job)s AND name = s.name AND step BETWEEN %(lo)s AND %(hi)s LIMIT %(cap)s
           ) c
       ) ELSE b.last - b.first + 1 END,
       (SELECT step FROM metric_points WHERE job_id = %(job)s AND name = s.name ORDER BY step DESC LIMIT 1)
FROM unnest(%(names)s::text[]) AS s(name)
CROSS JOIN LATERAL (
    SELECT (SELECT step FROM metric_points
            WHERE job_id = %(job)s AND name = s.name AND step BETWEEN %(lo)s AND %(hi)s
            ORDER BY step LIMIT 1) AS first,
           (SELECT step FROM metric_points
            WHERE job_id = %(job)s AND name = s.name AND step BETWEEN %(lo)s AND %(hi)s
            ORDER BY step DESC LIMIT 1) AS last
) b
WHERE b.first IS NOT NULL
ORDER BY s.name
"""

FINITE = "value > '-Infinity' AND value < 'Infinity'"  # false for NaN too (Postgres sorts NaN last)

# The units a downsampled read groups: rollup rows of buckets wholly inside [lo, hi] up to the filled
# extent, and raw points for the rest (the partial buckets at both ends and anything not filled yet).
# One statement, so rollups and points come from one snapshot.
UNITS_SQL = f"""
WITH cover AS (
    SELECT %(b0)s::bigint AS b0,
           greatest(%(b0)s::bigint - 1, least(%(b1)s::bigint, coalesce(max(bucket), -1))) AS b1
    FROM metric_rollups WHERE job_id = %(job)s AND name = %(name)s AND width = %(w)s::int
)
SELECT 0, bucket * %(w)s::bigint, n, n_finite, step_sum, epoch_sum, value_sum, value_min, value_max
FROM metric_rollups
WHERE job_id = %(job)s AND name = %(name)s AND width = %(w)s::int AND n > 0
  AND bucket >= (SELECT b0 FROM cover) AND bucket <= (SELECT b1 FROM cover)
UNION ALL
SELECT 1, step, 1, ({FINITE})::int, step, epoch,
       CASE WHEN {FINITE} THEN value ELSE 0 END, CASE WHEN {FINITE} THEN value END,
       CASE WHEN {FINITE} THEN value END
FROM metric_points
WHERE job_id = %(job)s AND name = %(name)s
  AND step >= %(lo)s::bigint AND step <= least(%(hi)s::bigint, (SELECT b0 FROM cover) * %(w)s::bigint - 1)
UNION ALL
SELECT 1, step, 1, ({FINITE})::int, step, epoch,
       CASE WHEN {FINITE} THEN value ELSE 0 END, CASE WHEN {FINITE} THEN value END,
       CASE WHEN {FINITE} THEN value END
FROM metric_points
WHERE job_id = %(job)s AND name = %(name)s
  AND step >= greatest(%(lo)s::bigint, ((SELECT b1 FROM cover) + 1) * %(w)s::bigint) AND step <= %(hi)s::bigint
"""

# Rollups of buckets [b0, b1] from the raw points, plus an empty row for b1 when it holds no point,
# so that the largest bucket stored always says how far the fill went.
FILL_RAW_SQL = f"""
WITH agg AS (
    SELECT step / %(w)s::bigint AS bucket, count(*) AS n, count(*) FILTER (WHERE {FINITE}) AS n_finite,
           sum(step::float8) AS step_sum, sum(epoch) AS epoch_sum,
           coalesce(sum(value) FILTER (WHERE {FINITE}), 0) AS value_sum,
           min(value) FILTER (WHERE {FINITE}) AS value_min, max(value) FILTER (WHERE {FINITE}) AS value_max
    FROM metric_points
    WHERE job_id = %(job)s AND name = %(name)s AND step >= %(b0)s::bigint * %(w)s::bigint AND step < (%(b1)s::bigint + 1) * %(w)s::bigint
    GROUP BY 1
)
INSERT INTO metric_rollups
    (job_id, name, width, bucket, last_step, n, n_finite, step_sum, epoch_sum, value_sum, value_min, value_max)
SELECT %(job)s, %(name)s, %(w)s::bigint, bucket, (bucket + 1) * %(w)s::bigint - 1, n, n_finite, step_sum, epoch_sum,
       value_sum, value_min, value_max
FROM agg
UNION ALL
SELECT %(job)s, %(name)s, %(w)s::bigint, %(b1)s::bigint, (%(b1)s::bigint + 1) * %(w)s::bigint - 1, 0, 0, 0, 0, 0, NULL, NULL
WHERE NOT EXISTS (SELECT 1 FROM agg WHERE bucket = %(b1)s::bigint)
ON CONFLICT DO NOTHING
"""

# The same from a finer width's rollups (``f`` finer buckets to one), when those cover the stretch.
FILL_FINER_SQL = """
WITH agg AS (
    SELECT bucket / %(f)s::bigint AS bucket, sum(n) AS n, sum(n_finite) AS n_finite, sum(step_sum) AS step_sum,
           sum(epoch_sum) AS epoch_sum, sum(value_sum) AS value_sum, min(value_min) AS value_min,
           max(value_max) AS value_max
    FROM metric_rollups
    WHERE job_id = %(job)s AND name = %(name)s AND width = %(fw)s::bigint
      AND bucket >= %(b0)s::bigint * %(f)s::bigint AND bucket < (%(b1)s::bigint + 1) * %(f)s::bigint
    GROUP BY 1
)
INSERT INTO metric_rollups
    (job_id, name, width, bucket, last_step, n, n_finite, step_sum, epoch_sum, value_sum, value_min, value_max)
SELECT %(job)s, %(name)s, %(w)s::bigint, bucket, (bucket + 1) * %(w)s::bigint - 1, n, n_finite, step_sum, epoch_sum,
       value_sum, value_min, value_max
FROM agg WHERE n > 0
UNION ALL
SELECT %(job)s, %(name)s, %(w)s::bigint, %(b1)s::bigint, (%(b1)s::bigint + 1) * %(w)s::bigint - 1, 0, 0, 0, 0, 0, NULL, NULL
WHERE NOT EXISTS (SELECT 1 FROM agg WHERE bucket = %(b1)s::bigint AND n > 0)
ON CONFLICT DO NOTHING
"""

# How far each width is filled for one series (an index probe per width).
EXTENTS_SQL = """
SELECT w.width, (SELECT max(bucket) FROM metric_rollups
                 WHERE job_id = %(job)s AND name = %(name)s AND width = w.width)
FROM unnest(%(widths)s::int[]) AS w(width)
"""


def _cursor(session: Session):  # noqa: ANN202
    """A binary cursor on the session's own connection (arrays and floats arrive unparsed)."""
    return session.connection().connection.driver_connection.cursor(binary=True)


def rollup_width(span: int, max_points: int) -> int | None:
    """The widest power-of-two bucket with at least one per output point, if it is wide enough."""
    per_point = span // max_points
    if per_point < ROLLUP_MIN_WIDTH:
        return None
    return 1 << (per_point.bit_length() - 1)


def _read_pg(
    session: Session,
    job_id: str,
    names: list[str],
    prefix: str | None,
    step_min: int | None,
    step_max: int | None,
    max_points: int,
) -> list[Series]:
    lo = step_min if step_min is not None else -NO_STEP
    hi = step_max if step_max is not None else NO_STEP
    with _cursor(session) as cursor:
        # A job with millions of points inflates the planner's estimates past jit_above_cost; the
        # statements here take milliseconds, and compiling them would take tens.
        cursor.execute("SET LOCAL jit = off")
        if not names:
            cursor.execute(NAMES_SQL, {"job": job_id})
            names = [row[0] for row in cursor.fetchall()]
        if prefix:
            names = [n for n in names if n.startswith(prefix)]
        if not names:
            return []
        if max_points >= RAW_ONLY_POINTS:
            return _read_raw(session, job_id, names, lo, hi, max_points)
        params = {"job": job_id, "names": names, "lo": lo, "hi": hi, "max_points": max_points}
        cursor.execute(PROBE_SQL, params | {"cap": max_points + 1})
        probes = cursor.fetchall()
    raw: list[str] = []
    rolled: list[tuple[str, int, int, int, int]] = []
    for name, first, last, count, series_last in probes:
        width = rollup_width(last - first + 1, max_points)
        if count <= max_points or width is None or first < 0:
            raw.append(name)
        else:
            rolled.append((name, first, last, width, series_last))
    out = {s.name: s for s in _read_raw(session, job_id, raw, lo, hi, max_points)} if raw else {}
    for name, first, last, width, series_last in rolled:
        out[name] = _read_rolled(session, job_id, name, first, last, width, series_last, max_points)
    return [out[name] for name in sorted(out)]


# Each series packed into arrays server-side and sent in binary: one row per series instead of one
# per point, so a 10,000-point read costs a few milliseconds of Python. One index range scan per
# name (a lateral join): a job with millions of points never tempts the planner into a table scan.
RAW_SQL = """
SELECT s.name, r.steps, r.epochs, r.values
FROM unnest(%(names)s::text[]) AS s(name)
CROSS JOIN LATERAL (
    SELECT array_agg(step) AS steps, array_agg(epoch) AS epochs, array_agg(value) AS values
    FROM (
        SELECT step, epoch, value FROM metric_points
        WHERE job_id = %(job)s AND name = s.name AND step >= %(lo)s AND step <= %(hi)s
        ORDER BY step
    ) p
) r
WHERE r.steps IS NOT NULL
ORDER BY s.name
"""


def _read_raw(
    session: Session, job_id: str, names: list[str], lo: int, hi: int, max_points: int
) -> list[Series]:
    with _cursor(session) as cursor:
        cursor.execute(RAW_SQL, {"job": job_id, "names": names, "lo": lo, "hi": hi})
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


def _units(session: Session, job_id: str, name: str, lo: int, hi: int, width: int) -> np.ndarray:
    """Rollup rows and raw points of [lo, hi] as one array: start step, n, n_finite, step sum,
    epoch sum, value sum, min, max (NaN where no value is finite)."""
    params = {
        "job": job_id,
        "name": name,
        "w": width,
        "lo": lo,
        "hi": hi,
        "b0": _b0(lo, width),
        "b1": _b1(hi, width),
    }
    with _cursor(session) as cursor:
        cursor.execute(UNITS_SQL, params)
        rows = cursor.fetchall()
    return np.array(rows, dtype=np.float64).reshape(-1, 9)[:, 1:]


def _b0(lo: int, width: int) -> int:
    return -(-lo // width)  # the first bucket that starts at or after lo


def _b1(hi: int, width: int) -> int:
    return (hi + 1) // width - 1  # the last bucket that ends at or before hi


def _read_rolled(
    session: Session,
    job_id: str,
    name: str,
    first: int,
    last: int,
    width: int,
    series_last: int,
    max_points: int,
) -> Series:
    """Downsample [first, last] into max_points equal step ranges from rollups at ``width``."""
    with _cursor(session) as cursor:
        cursor.execute(
            "SELECT max(bucket) FROM metric_rollups WHERE job_id = %s AND name = %s AND width = %s::int",
            (job_id, name, width),
        )
        top = cursor.fetchone()[0]
    # Complete buckets of the range that no rollup covers yet: fill first when there are several
    # (the first read at this width, or one after many appends).
    missing = (
        min(_b1(last, width), series_last // width - 1)
        - max(_b0(first, width), -1 if top is None else top + 1)
        + 1
    )
    if missing > FILL_AFTER_BUCKETS:
        fill_rollups(session, job_id, name, width, series_last)
    units = _units(session, job_id, name, first, last, width)
    if not len(units):  # the series went away since the probe
        return Series(name, [], [], [], 0, False)
    units = units[np.argsort(units[:, 0], kind="stable")]
    start, n, n_finite, step_sum, epoch_sum, value_sum, value_min, value_max = units.T
    span = last - first + 1
    group = ((start.astype(np.int64) - first) * max_points) // span
    cuts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    count = np.add.reduceat(n, cuts)
    finite = np.add.reduceat(n_finite, cuts)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(finite > 0, np.add.reduceat(value_sum, cuts) / finite, np.nan)
        lo = np.fmin.reduceat(value_min, cuts)
        hi = np.fmax.reduceat(value_max, cuts)
    return Series(
        name,
        np.rint(np.add.reduceat(step_sum, cuts) / count).astype(np.int64).tolist(),
        (np.add.reduceat(epoch_sum, cuts) / count).tolist(),
        json_floats(mean),
        int(count.sum()),
        True,
        json_floats(lo),
        json_floats(hi),
    )


def fill_rollups(session: Session, job_id: str, name: str, width: int, series_last: int) -> bool:
    """Fill the rollups of one series at ``width`` through the last bucket that ends before the
    series' last step. Runs in its own short transactions (committed at once, on another pooled
    connection) under the job's rollup lock; gives up, returning False, while another transaction
    holds that lock (a fill, or a rewrite of the series' history): the read then takes raw points.
    """
    target = series_last // width - 1
    if target < 0:
        return False
    finer = [width >> k for k in range(1, width.bit_length()) if width >> k >= ROLLUP_MIN_WIDTH]
    bind = session.get_bind()
    # SQLAlchemy's own transactions: a pooled connection can come back from its pre-ping inside an
    # implicit transaction, where a driver-level transaction block would only be a savepoint.
    with getattr(bind, "engine", bind).connect() as conn:
        while True:
            with conn.begin():
                sql = conn.exec_driver_sql
                locked = sql(
                    "SELECT pg_try_advisory_xact_lock(%(cls)s, hashtext(%(job)s))",
                    {"cls": ROLLUP_LOCK_CLASS, "job": job_id},
                ).scalar()
                if not locked:
                    return False
                extents = dict(
                    sql(EXTENTS_SQL, {"job": job_id, "name": name, "widths": [width, *finer]}).all()
                )
                top = extents.pop(width)
                if top is None:
                    first = sql(
                        "SELECT step FROM metric_points WHERE job_id = %(job)s AND name = %(name)s"
                        " ORDER BY step LIMIT 1",
                        {"job": job_id, "name": name},
                    ).scalar()
                    if first is None or first < 0:
                        return False
                    b0 = first // width
                else:
                    b0 = top + 1
                if b0 > target:
                    return True
                b1 = min(target, b0 + max(1, FILL_STEPS // width) - 1)
                params = {"job": job_id, "name": name, "w": width, "b0": b0, "b1": b1}
                # The coarsest finer width filled through this stretch, else the raw points.
                source = next(
                    (w for w in finer if extents[w] is not None and (extents[w] + 1) * w >= (b1 + 1) * width),
                    None,
                )
                if source is None:
                    sql(FILL_RAW_SQL, params)
                else:
                    sql(FILL_FINER_SQL, params | {"fw": source, "f": width // source})
            if b1 >= target:
                return True


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
    with np.errstate(invalid="ignore", divide="ignore"):
        # A bucket with no finite value (a diverged stretch) has no mean: null, like its envelope.
        mean_v = np.add.reduceat(np.nan_to_num(finite), starts) / np.add.reduceat(
            np.isfinite(finite).astype(np.float64), starts
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
