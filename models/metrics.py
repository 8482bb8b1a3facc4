"""The metric write and read path, shared by the worker, the API and the benchmarks.

A series is stored in chunks (``metric_chunks``): one row holds a stretch of one series, its steps,
epochs and values packed as arrays, so a batch of 1,000 points across five series is five small
inserts instead of 1,000 index insertions. The chunks of a series never overlap. A write whose
steps fall inside or across stored chunks of its series (a retried batch, a re-logged step) merges
into them: the new value of a step replaces the old one, so nothing is ever stored twice.

Reads of long series on Postgres go through rollups (``metric_rollups``): per-bucket count, sums,
minimum and maximum of a series over aligned step buckets whose width is a power of two. A
downsampled read takes the rollups of the width that gives between 1 and 2 buckets per output point
(a few thousand rows) plus the raw points the rollups do not cover yet.

The rollups are a cache. The first read that needs a width fills it, in short transactions of
``FILL_STEPS`` steps each; later reads fill only what was appended since. Only buckets that end
before the series' last step are filled, and a write deletes the rollups at or after its first step
in the same statement, so an appended or re-sent batch never leaves a stale bucket behind. Rewriting
history (``delete_after``, a resumed attempt) takes a lock that fills also take, so a fill never
races it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import groupby
from typing import Any

import numpy as np
from sqlalchemy import Connection, delete, func, insert, select, text, update
from sqlalchemy.orm import Session

from models.tables import MetricChunk, MetricRollup

# Most points one chunk holds (a write of more, or a merge, is split): a read of a short step range
# decodes at most this many points per series edge.
CHUNK_POINTS = 4_096
# Byte order of the packed arrays: Postgres's int8send/float8send, so SQL can build chunks too.
STEP_DTYPE = np.dtype(">i8")
FLOAT_DTYPE = np.dtype(">f8")

# Postgres: a batch's chunks are seven array parameters unnested server-side (constant statement
# text, prepared once per connection), sent in binary (``%b``: a text array of bytea would be
# hex-escaped by the client and parsed back by the server). A series whose chunk would overlap a
# stored chunk of it is left out (``ins`` names what went in) and merged by ``_merge``. The rollups
# at or after the batch's first step go in the same statement: an index probe that finds nothing
# unless a read cached that stretch. ``{held}`` is what every write waits on: nothing, or the
# fenced update of the job row (``PG_APPEND_FENCED``).
_APPEND_CTES = """
new AS (
    SELECT t.* FROM unnest(
        %(names)b::varchar[], %(firsts)b::bigint[], %(lasts)b::bigint[], %(ns)b::int[],
        %(steps)b::bytea[], %(epochs)b::bytea[], %(vals)b::bytea[]
    ) AS t(name, first_step, last_step, n, steps, epochs, vals)
    WHERE {held}
), stale AS (
    DELETE FROM metric_rollups
    WHERE job_id = %(job_id)s AND name = ANY(%(names)b::varchar[]) AND last_step >= %(first_step)s
      AND {held}
), clash AS (
    SELECT new.name FROM new WHERE EXISTS (
        SELECT 1 FROM metric_chunks c
        WHERE c.job_id = %(job_id)s AND c.name = new.name
          AND c.last_step >= new.first_step AND c.first_step <= new.last_step
    )
), ins AS (
    INSERT INTO metric_chunks (job_id, name, first_step, last_step, n, steps, epochs, vals)
    SELECT %(job_id)s, new.* FROM new WHERE new.name NOT IN (SELECT name FROM clash)
    ON CONFLICT DO NOTHING
    RETURNING name
)
"""
PG_APPEND = "WITH " + _APPEND_CTES.format(held="true") + "SELECT name FROM ins"

# The metric writer's batch, one statement: the job row's fenced update (the heartbeat, and the
# progress when there is one) and the append, which writes only when the update found the row
# still held by the attempt's token. A stale attempt changes nothing, and learns it from ``held``
# (0); ``written`` names the series that went in. All parts run once, on one snapshot; the update
# locks the job row until the transaction ends, as the separate UPDATE did.
_BEAT = """
UPDATE jobs SET heartbeat_at = %(heartbeat_at)s, progress = coalesce(%(progress)s::jsonb, progress)
WHERE id = %(job_id)s AND attempt_token = %(token)s
"""
PG_APPEND_FENCED = (
    "WITH beat AS ("
    + _BEAT
    + "RETURNING id\n), "
    + _APPEND_CTES.format(held="EXISTS (SELECT FROM beat)")
    + "SELECT (SELECT count(*) FROM beat)::int AS held, ARRAY(SELECT name FROM ins) AS written"
)


@dataclass(frozen=True, slots=True)
class Point:
    name: str
    step: int
    epoch: float
    value: float


@dataclass(slots=True)
class Block:
    """Points of one series as arrays, sorted by step, one per step."""

    name: str
    steps: np.ndarray  # int64
    epochs: np.ndarray  # float64
    values: np.ndarray  # float64, NaN and ±inf included

    def by_epoch(self) -> dict[int, float]:
        """Value per (whole) epoch, the later step winning: what per-epoch series are compared by."""
        return dict(zip(self.epochs.astype(np.int64).tolist(), self.values.tolist(), strict=True))

    def within(self, lo: int, hi: int) -> Block:
        keep = (self.steps >= lo) & (self.steps <= hi)
        if keep.all():
            return self
        return Block(self.name, self.steps[keep], self.epochs[keep], self.values[keep])


def write_points(session: Session, job_id: str, points: Sequence[Point]) -> int:
    """Store points; a step already stored for its series gets the new value. Returns how many were sent."""
    if not points:
        return 0
    write_blocks(session, job_id, blocks_of(points))
    return len(points)


def blocks_of(points: Sequence[Point]) -> list[Block]:
    """The points as one ``sorted_block`` per series, in the order the series first appear."""
    by_name: dict[str, list[Point]] = {}
    for p in points:
        by_name.setdefault(p.name, []).append(p)
    return [
        sorted_block(
            name,
            np.fromiter((p.step for p in ps), np.int64, len(ps)),
            np.fromiter((p.epoch for p in ps), np.float64, len(ps)),
            np.fromiter((p.value for p in ps), np.float64, len(ps)),
        )
        for name, ps in by_name.items()
    ]


def write_blocks(session: Session | Connection, job_id: str, blocks: Sequence[Block]) -> None:
    """Store whole series stretches (``sorted_block``s): appends go in as new chunks in one
    statement on Postgres; a stretch that overlaps stored chunks of its series is merged into them."""
    merge = list(blocks)
    if _dialect(session) == "postgresql" and blocks:
        conn = session.connection() if isinstance(session, Session) else session
        written = {row[0] for row in conn.exec_driver_sql(PG_APPEND, _append_params(job_id, blocks))}
        merge = [b for b in blocks if b.name not in written]
    for block in merge:
        _merge(session, job_id, block)


def append_fenced(
    conn: Connection,
    job_id: str,
    token: str,
    blocks: Sequence[Block],
    heartbeat_at: datetime,
    progress: dict[str, Any] | None = None,
) -> tuple[bool, list[Block]]:
    """Postgres, in the caller's transaction: the job row's heartbeat (and ``progress``, JSON-safe,
    when given) and the blocks' appends, only if attempt ``token`` still holds the job
    (``PG_APPEND_FENCED``). Returns whether it does (False: nothing was written) and the blocks
    that overlap stored chunks of their series, which the caller merges (``merge_blocks``) in the
    same transaction."""
    from psycopg.types.json import Jsonb

    params = {
        "job_id": job_id,
        "token": token,
        "heartbeat_at": heartbeat_at,
        "progress": None if progress is None else Jsonb(progress),
    }
    if not blocks:  # progress alone, or a flush
        return conn.exec_driver_sql(_BEAT, params).rowcount == 1, []
    held, written = conn.exec_driver_sql(PG_APPEND_FENCED, params | _append_params(job_id, blocks)).one()
    if not held:
        return False, []
    return True, [b for b in blocks if b.name not in set(written)]


def merge_blocks(conn: Session | Connection, job_id: str, blocks: Sequence[Block]) -> None:
    """Merge each block into the stored chunks of its series it overlaps (its values win)."""
    for block in blocks:
        _merge(conn, job_id, block)


def _append_params(job_id: str, blocks: Sequence[Block]) -> dict[str, Any]:
    from psycopg.types.numeric import Int8  # one parameter type, so one prepared statement

    rows = [row for b in blocks for row in _chunk_rows(b)]
    return {
        "job_id": job_id,
        "first_step": Int8(min(int(b.steps[0]) for b in blocks)),
        "names": [r["name"] for r in rows],
        "firsts": [Int8(r["first_step"]) for r in rows],
        "lasts": [Int8(r["last_step"]) for r in rows],
        "ns": [Int8(r["n"]) for r in rows],
        "steps": [r["steps"] for r in rows],
        "epochs": [r["epochs"] for r in rows],
        "vals": [r["vals"] for r in rows],
    }


def _dialect(session: Session | Connection) -> str:
    return (session.get_bind() if isinstance(session, Session) else session).dialect.name


def sorted_block(name: str, steps: np.ndarray, epochs: np.ndarray, values: np.ndarray) -> Block:
    """The points in step order; of points logged twice at one step the last one wins."""
    if len(steps) > 1 and not (np.diff(steps) > 0).all():
        order = np.argsort(steps, kind="stable")
        steps, epochs, values = steps[order], epochs[order], values[order]
        last = np.r_[steps[1:] != steps[:-1], True]  # the last of each run of equal steps
        steps, epochs, values = steps[last], epochs[last], values[last]
    return Block(name, steps, epochs, values)


def _chunk_rows(block: Block) -> Iterator[dict]:
    for a in range(0, len(block.steps), CHUNK_POINTS):
        steps = block.steps[a : a + CHUNK_POINTS]
        yield {
            "name": block.name,
            "first_step": int(steps[0]),
            "last_step": int(steps[-1]),
            "n": len(steps),
            "steps": steps.astype(STEP_DTYPE).tobytes(),
            "epochs": block.epochs[a : a + CHUNK_POINTS].astype(FLOAT_DTYPE).tobytes(),
            "vals": block.values[a : a + CHUNK_POINTS].astype(FLOAT_DTYPE).tobytes(),
        }


def decode(name: str, rows: Iterable[tuple[bytes, bytes, bytes]]) -> Block:
    """One series from its chunks' (steps, epochs, vals), given in step order."""
    rows = list(rows)
    return Block(
        name,
        np.frombuffer(b"".join(r[0] for r in rows), STEP_DTYPE).astype(np.int64),
        np.frombuffer(b"".join(r[1] for r in rows), FLOAT_DTYPE).astype(np.float64),
        np.frombuffer(b"".join(r[2] for r in rows), FLOAT_DTYPE).astype(np.float64),
    )


def _merge(session: Session | Connection, job_id: str, block: Block) -> None:
    """Replace the stored chunks that overlap ``block``'s step range by their points merged with
    it (its values win). The merged stretch covers no other chunk: ranges never overlap."""
    c = MetricChunk
    lo, hi = int(block.steps[0]), int(block.steps[-1])
    where = (c.job_id == job_id, c.name == block.name, c.last_step >= lo, c.first_step <= hi)
    old = session.execute(
        select(c.first_step, c.steps, c.epochs, c.vals).where(*where).order_by(c.first_step).with_for_update()
    ).all()
    if old:
        stored = decode(block.name, [row[1:] for row in old])
        keep = ~np.isin(stored.steps, block.steps)
        block = sorted_block(
            block.name,
            np.concatenate([stored.steps[keep], block.steps]),
            np.concatenate([stored.epochs[keep], block.epochs]),
            np.concatenate([stored.values[keep], block.values]),
        )
        session.execute(delete(c).where(*where[:2], c.first_step.in_([row[0] for row in old])))
    session.execute(insert(c), [{"job_id": job_id, **row} for row in _chunk_rows(block)])


def delete_after(session: Session, job_id: str, step: int) -> None:
    """Drop points logged after ``step`` (a resumed attempt re-logs them), and the rollups over them.

    On Postgres the job's rollup lock is taken first, in its own statement: a fill in progress
    finishes (and this transaction's deletes then see its rows), or a fill that comes later waits
    for this transaction and sees the shortened series."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(ROLLUP_LOCK_SHARED, {"cls": ROLLUP_LOCK_CLASS, "job": job_id})
    c = MetricChunk
    session.execute(delete(MetricRollup).where(MetricRollup.job_id == job_id, MetricRollup.last_step > step))
    straddling = session.execute(
        select(c.name, c.first_step, c.steps, c.epochs, c.vals).where(
            c.job_id == job_id, c.first_step <= step, c.last_step > step
        )
    ).all()
    session.execute(delete(c).where(c.job_id == job_id, c.first_step > step))
    for name, first, *arrays in straddling:  # keep each one's points up to the step
        kept = decode(name, [arrays]).within(first, step)
        row = next(_chunk_rows(kept))
        session.execute(
            update(c)
            .where(c.job_id == job_id, c.name == name, c.first_step == first)
            .values(
                last_step=row["last_step"],
                n=row["n"],
                steps=row["steps"],
                epochs=row["epochs"],
                vals=row["vals"],
            )
        )


def load_blocks(
    session: Session | Connection,
    job_ids: Sequence[str],
    names: Sequence[str] | None = None,
    prefix: str | None = None,
    lo: int | None = None,
    hi: int | None = None,
) -> Iterator[tuple[str, Block]]:
    """(job id, series) for the jobs' series (those in ``names`` or starting with ``prefix``) within
    the step range, in job, name order: every stored point once."""
    if _dialect(session) == "postgresql":
        rows = _load_chunks_pg(session, job_ids, names, prefix, lo, hi)
    else:
        c = MetricChunk
        stmt = select(c.job_id, c.name, c.steps, c.epochs, c.vals).where(c.job_id.in_(list(job_ids)))
        if names:
            stmt = stmt.where(c.name.in_(list(names)))
        if prefix:
            stmt = stmt.where(c.name.startswith(prefix, autoescape=True))
        if lo is not None:
            stmt = stmt.where(c.last_step >= lo)
        if hi is not None:
            stmt = stmt.where(c.first_step <= hi)
        rows = session.execute(stmt.order_by(c.job_id, c.name, c.first_step)).all()
    start = 0
    for i in range(1, len(rows) + 1):
        if i == len(rows) or rows[i][:2] != rows[start][:2]:
            job_id, name = rows[start][:2]
            block = decode(name, [row[2:] for row in rows[start:i]])
            block = block.within(-NO_STEP if lo is None else lo, NO_STEP if hi is None else hi)
            if len(block.steps):
                yield job_id, block
            start = i


def _load_chunks_pg(
    session: Session | Connection,
    job_ids: Sequence[str],
    names: Sequence[str] | None,
    prefix: str | None,
    lo: int | None,
    hi: int | None,
) -> list[tuple]:
    """load_blocks' rows on Postgres, through a binary cursor: the arrays arrive as they are stored
    (through SQLAlchemy they came hex-encoded, and decoding 10,000 points' took ~3 ms)."""
    where = ["job_id = ANY(%(jobs)s::text[])"]
    params: dict[str, Any] = {"jobs": list(job_ids)}
    if names:
        where.append("name = ANY(%(names)s::text[])")
        params["names"] = list(names)
    if prefix:
        where.append("name LIKE %(prefix)s ESCAPE '/'")
        params["prefix"] = prefix.replace("/", "//").replace("%", "/%").replace("_", "/_") + "%"
    if lo is not None:
        where.append("last_step >= %(lo)s::bigint")
        params["lo"] = lo
    if hi is not None:
        where.append("first_step <= %(hi)s::bigint")
        params["hi"] = hi
    sql = (
        "SELECT job_id, name, steps, epochs, vals FROM metric_chunks WHERE "
        + " AND ".join(where)
        + " ORDER BY job_id, name, first_step"
    )
    with _cursor(session) as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def last_values(
    session: Session, job_ids: Sequence[str], names: Sequence[str]
) -> dict[tuple[str, str], float]:
    """The value at the last step of each of the jobs' series, by (job id, name)."""
    c, newest = MetricChunk, MetricChunk.__table__.alias("newest")
    last_chunk = (
        select(func.max(newest.c.first_step))
        .where(newest.c.job_id == c.job_id, newest.c.name == c.name)
        .scalar_subquery()
    )
    rows = session.execute(
        select(c.job_id, c.name, c.vals).where(
            c.job_id.in_(list(job_ids)), c.name.in_(list(names)), c.first_step == last_chunk
        )
    ).all()
    return {(job_id, name): float(np.frombuffer(vals[-8:], FLOAT_DTYPE)[0]) for job_id, name, vals in rows}


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
    *,
    arrays: bool = False,
) -> list[Series]:
    """The job's series (all, those in ``names``, or those starting with ``prefix``) within the step
    range, sorted by name; a series with more than ``max_points`` points comes downsampled.
    ``arrays``: a series read whole keeps its steps, epochs and values as numpy arrays (NaN and ±inf
    included), for a caller that serializes them as they are (orjson writes those as null) instead
    of making 30,000 Python numbers of a 10,000-point series first."""
    names = list(names or [])
    if session.get_bind().dialect.name == "postgresql":
        return _read_pg(session, job_id, names, prefix, step_min, step_max, max_points, arrays)
    return _read_raw(session, job_id, names, prefix, step_min, step_max, max_points, arrays)


def _read_raw(
    session: Session,
    job_id: str,
    names: list[str],
    prefix: str | None,
    lo: int | None,
    hi: int | None,
    max_points: int,
    arrays: bool = False,
) -> list[Series]:
    return [
        _to_series(b.name, b.steps, b.epochs, b.values, max_points, arrays)
        for _, b in load_blocks(session, [job_id], names, prefix, lo, hi)
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

# One name at a time, smallest first: an index probe per series, however many chunks each has.
NAMES_SQL = """
WITH RECURSIVE names(name) AS (
    (SELECT name FROM metric_chunks WHERE job_id = %(job)s ORDER BY name LIMIT 1)
  UNION ALL
    SELECT (SELECT m.name FROM metric_chunks m
            WHERE m.job_id = %(job)s AND m.name > names.name ORDER BY m.name LIMIT 1)
    FROM names WHERE names.name IS NOT NULL
)
SELECT name FROM names WHERE name IS NOT NULL
"""

# Per series: the chunks that overlap the range (the first one's start, the last one's end, their
# points) and the series' last step overall. The two edge chunks may hold points outside the range:
# ``_exact_range`` counts those off.
PROBE_SQL = """
SELECT s.name, b.first, b.last, b.n,
       (SELECT max(last_step) FROM metric_chunks WHERE job_id = %(job)s AND name = s.name)
FROM unnest(%(names)s::text[]) AS s(name)
CROSS JOIN LATERAL (
    SELECT min(first_step) AS first, max(last_step) AS last, sum(n) AS n FROM metric_chunks
    WHERE job_id = %(job)s AND name = s.name AND last_step >= %(lo)s AND first_step <= %(hi)s
) b
WHERE b.first IS NOT NULL
ORDER BY s.name
"""

# The chunks of the series whose chunks in the range hold at most %(raw)s points: those are read
# raw whatever PROBE_SQL finds, so this goes out with it, in the same round trip.
SHORT_CHUNKS_SQL = """
WITH short AS MATERIALIZED (
    SELECT s.name FROM unnest(%(names)s::text[]) AS s(name)
    WHERE (SELECT sum(n) FROM metric_chunks
           WHERE job_id = %(job)s AND name = s.name AND last_step >= %(lo)s AND first_step <= %(hi)s) <= %(raw)s
)
SELECT name, steps, epochs, vals FROM metric_chunks
WHERE job_id = %(job)s AND name = ANY(ARRAY(SELECT name FROM short))
  AND last_step >= %(lo)s AND first_step <= %(hi)s
ORDER BY name, first_step
"""

EDGES_SQL = """
SELECT first_step, last_step, steps FROM metric_chunks
WHERE job_id = %(job)s AND name = %(name)s AND (first_step = %(first)s OR last_step = %(last)s)
"""

# What a downsampled read groups, from one snapshot: the rollup rows of buckets wholly inside
# [lo, hi] up to the filled extent (as arrays), and the chunks holding the rest (the partial
# buckets at both ends and anything not filled yet), which ``_units`` cuts to those stretches.
# Unless more than %(fill_after)s complete buckets of the range (up to the series' last complete
# one, %(last_bucket)s) have no rollup yet: then it returns only ``fill`` true, and the caller fills
# the rollups and asks again. So a read that needs no fill is one statement, and a first read does
# not fetch the raw chunks of the whole series to throw them away.
# The rollup columns come as packed big-endian binary (``*send`` of each value, concatenated), which
# numpy reads as they are: an array of 4,000 floats would become 4,000 Python floats first. They come
# in no particular order, but all eight in the same one (one aggregate node feeds each row to every
# aggregate); ``_read_rolled`` sorts the units by step. An ORDER BY in each aggregate made Postgres
# sort the ~4,000 rows eight times: 16 of the statement's 20 ms for a 1,000,000-point series read at
# 2,000 points, against 7 of 12 without. The last bucket stored is asked for with ORDER BY ... LIMIT
# 1, not max(): on a table whose statistics predate its rollups (a first fill, before autovacuum's
# ANALYZE) the planner took max() through the last_step index and read every rollup row of the
# series; this form walks the primary key backwards to one row either way.
UNITS_SQL = """
WITH covered AS (
    SELECT greatest(%(b0)s::bigint - 1, least(%(b1)s::bigint, coalesce((
        SELECT bucket FROM metric_rollups WHERE job_id = %(job)s AND name = %(name)s AND width = %(w)s::int
        ORDER BY bucket DESC LIMIT 1), -1))) AS b1
), cover AS MATERIALIZED (
    SELECT %(b0)s::bigint AS b0, b1,
           least(%(b1)s::bigint, %(last_bucket)s::bigint) - greatest(%(b0)s::bigint, b1 + 1) + 1
             > %(fill_after)s::bigint AS fill
    FROM covered
)
SELECT cover.b0, cover.b1, cover.fill, r.*, c.*
FROM cover
CROSS JOIN LATERAL (
    SELECT string_agg(int8send(bucket), ''), string_agg(int4send(n), ''), string_agg(int4send(n_finite), ''),
           string_agg(float8send(step_sum), ''), string_agg(float8send(epoch_sum), ''),
           string_agg(float8send(value_sum), ''), string_agg(float8send(coalesce(value_min, 'NaN')), ''),
           string_agg(float8send(coalesce(value_max, 'NaN')), '')
    FROM metric_rollups
    WHERE NOT cover.fill AND job_id = %(job)s AND name = %(name)s AND width = %(w)s::int AND n > 0
      AND bucket >= cover.b0 AND bucket <= cover.b1
) r
CROSS JOIN LATERAL (
    SELECT array_agg(steps ORDER BY first_step), array_agg(epochs ORDER BY first_step),
           array_agg(vals ORDER BY first_step)
    FROM metric_chunks
    WHERE NOT cover.fill AND job_id = %(job)s AND name = %(name)s AND (
        (last_step >= %(lo)s::bigint AND first_step <= least(%(hi)s::bigint, cover.b0 * %(w)s::bigint - 1))
        OR (last_step >= greatest(%(lo)s::bigint, (cover.b1 + 1) * %(w)s::bigint) AND first_step <= %(hi)s::bigint)
    )
) c
"""

# Rollups from per-bucket aggregates computed here (``_aggregate``), as arrays.
FILL_RAW_SQL = """
INSERT INTO metric_rollups
    (job_id, name, width, bucket, last_step, n, n_finite, step_sum, epoch_sum, value_sum, value_min, value_max)
SELECT %(job)s, %(name)s, %(w)s::bigint, b, (b + 1) * %(w)s::bigint - 1, n, nf, ss, es, vs, mn, mx
FROM unnest(%(b)s::bigint[], %(n)s::int[], %(nf)s::int[], %(ss)s::float8[], %(es)s::float8[],
            %(vs)s::float8[], %(mn)s::float8[], %(mx)s::float8[]) AS t(b, n, nf, ss, es, vs, mn, mx)
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


def _cursor(session: Session | Connection):  # noqa: ANN202
    """A binary cursor on the session's own connection (arrays and floats arrive unparsed)."""
    conn = session.connection() if isinstance(session, Session) else session
    return conn.connection.driver_connection.cursor(binary=True)


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
    arrays: bool = False,
) -> list[Series]:
    lo = step_min if step_min is not None else -NO_STEP
    hi = step_max if step_max is not None else NO_STEP
    params = {"job": job_id, "lo": lo, "hi": hi, "raw": max_points}
    # One pipeline: the setting, the probe and the short series' chunks go out together and come
    # back in one round trip (on a busy machine each round trip costs a wake-up of both processes).
    with _cursor(session) as cursor, _cursor(session) as chunks, cursor.connection.pipeline():
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
        raw_only = max_points >= RAW_ONLY_POINTS
        if not raw_only:
            cursor.execute(PROBE_SQL, params | {"names": names})
            chunks.execute(SHORT_CHUNKS_SQL, params | {"names": names})
            probes, short = cursor.fetchall(), chunks.fetchall()
    if raw_only:
        return _read_raw(session, job_id, names, None, step_min, step_max, max_points, arrays)
    out: dict[str, Series] = {}
    read: set[str] = set()
    for name, group in groupby(short, key=lambda row: row[0]):
        read.add(name)
        block = decode(name, [row[1:] for row in group]).within(lo, hi)
        if len(block.steps):
            out[name] = _to_series(name, block.steps, block.epochs, block.values, max_points, arrays)
    raw: list[str] = []
    rolled: list[tuple[str, int, int, int, int]] = []
    for name, first, last, count, series_last in probes:
        if name in read:  # read above, with the probe
            continue
        if count <= max_points:  # it grew past max_points between the two statements' snapshots
            raw.append(name)
            continue
        if first < lo or last > hi:
            first, last, count = _exact_range(session, job_id, name, first, last, count, lo, hi)
        width = rollup_width(last - first + 1, max_points)
        if count <= max_points or width is None or first < 0:
            raw.append(name)
        else:
            rolled.append((name, first, last, width, series_last))
    if raw:
        out |= {
            s.name: s for s in _read_raw(session, job_id, raw, None, step_min, step_max, max_points, arrays)
        }
    for name, first, last, width, series_last in rolled:
        out[name] = _read_rolled(session, job_id, name, first, last, width, series_last, max_points)
    return [out[name] for name in sorted(out)]


def _exact_range(
    session: Session, job_id: str, name: str, first: int, last: int, count: int, lo: int, hi: int
) -> tuple[int, int, int]:
    """First and last step within [lo, hi] and the points there, from the probe's chunk-level
    figures and the steps of the edge chunks that reach past the range (count 0: none inside)."""
    with _cursor(session) as cursor:
        cursor.execute(EDGES_SQL, {"job": job_id, "name": name, "first": first, "last": last})
        edges = [(start, end, np.frombuffer(steps, STEP_DTYPE)) for start, end, steps in cursor.fetchall()]
    head = next(steps for start, _, steps in edges if start == first)
    tail = next(steps for _, end, steps in edges if end == last)
    count -= int((head < lo).sum()) + int((tail > hi).sum())
    inside_head, inside_tail = head[(head >= lo) & (head <= hi)], tail[(tail >= lo) & (tail <= hi)]
    if count <= 0 or not len(inside_head) or not len(inside_tail):
        return 0, 0, 0
    return int(inside_head[0]), int(inside_tail[-1]), count


# How UNITS_SQL packs bucket, n, n_finite, step_sum, epoch_sum, value_sum, value_min, value_max.
ROLLUP_COLUMN_TYPES = (">i8", ">i4", ">i4", ">f8", ">f8", ">f8", ">f8", ">f8")


def _fetch_units(
    session: Session, job_id: str, name: str, lo: int, hi: int, width: int, series_last: int, fill_after: int
) -> tuple:
    """UNITS_SQL's row for [lo, hi]: (b0, b1, fill, the eight rollup arrays, the three chunk arrays),
    the arrays empty when ``fill`` (more than ``fill_after`` complete buckets of the range have no
    rollup yet; b1 is the last bucket of the range they cover)."""
    params = {
        "job": job_id,
        "name": name,
        "w": width,
        "lo": lo,
        "hi": hi,
        "b0": _b0(lo, width),
        "b1": _b1(hi, width),
        "last_bucket": series_last // width - 1,
        "fill_after": fill_after,
    }
    with _cursor(session) as cursor:
        cursor.execute(UNITS_SQL, params)
        return cursor.fetchone()


def _units(row: tuple, name: str, lo: int, hi: int, width: int) -> np.ndarray:
    """Rollup rows and raw points of [lo, hi] as one array: start step, n, n_finite, step sum,
    epoch sum, value sum, min, max (NaN where no value is finite)."""
    b0, b1, _, *columns = row
    rolled = np.array(
        [
            np.frombuffer(col or b"", dtype=kind)
            for col, kind in zip(columns[:8], ROLLUP_COLUMN_TYPES, strict=True)
        ],
        dtype=np.float64,
    )
    rolled[0] *= width  # bucket → its first step
    chunks = [] if columns[8] is None else list(zip(*columns[8:], strict=True))
    raw = decode(name, chunks)
    keep = ((raw.steps >= lo) & (raw.steps < b0 * width)) | (
        (raw.steps >= (b1 + 1) * width) & (raw.steps <= hi)
    )
    steps, epochs, values = raw.steps[keep], raw.epochs[keep], raw.values[keep]
    finite = np.isfinite(values)
    points = np.array(
        [
            steps,
            np.ones(len(steps)),
            finite,
            steps,
            epochs,
            np.where(finite, values, 0.0),
            np.where(finite, values, np.nan),
            np.where(finite, values, np.nan),
        ],
        dtype=np.float64,
    )
    return np.concatenate([rolled, points], axis=1).T


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
    # Several complete buckets of the range that no rollup covers yet (the first read at this width,
    # or one after many appends): the statement says so instead of reading; fill, and read again
    # (then whatever the rollups cover: a fill that stopped short leaves the rest to raw points).
    row = _fetch_units(session, job_id, name, first, last, width, series_last, FILL_AFTER_BUCKETS)
    if row[2]:
        fill_rollups(session, job_id, name, width, series_last)
        row = _fetch_units(session, job_id, name, first, last, width, series_last, NO_STEP)
    units = _units(row, name, first, last, width)
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
                        "SELECT min(first_step) FROM metric_chunks WHERE job_id = %(job)s AND name = %(name)s",
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
                    sql(FILL_RAW_SQL, params | _aggregate(conn, job_id, name, width, b0, b1))
                else:
                    sql(FILL_FINER_SQL, params | {"fw": source, "f": width // source})
            if b1 >= target:
                return True


def _aggregate(conn, job_id: str, name: str, width: int, b0: int, b1: int) -> dict[str, list]:  # noqa: ANN001
    """Per-bucket aggregates of buckets [b0, b1] from the chunks, as FILL_RAW_SQL's arrays; b1 gets
    an empty row when it holds no point, so the largest bucket stored says how far the fill went."""
    lo, hi = b0 * width, (b1 + 1) * width - 1
    rows = conn.exec_driver_sql(
        "SELECT steps, epochs, vals FROM metric_chunks WHERE job_id = %(job)s AND name = %(name)s"
        " AND last_step >= %(lo)s AND first_step <= %(hi)s ORDER BY first_step",
        {"job": job_id, "name": name, "lo": lo, "hi": hi},
    ).all()
    points = decode(name, rows).within(lo, hi)
    bucket = points.steps // width
    cuts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]]) if len(bucket) else np.zeros(0, np.int64)
    finite = np.isfinite(points.values)
    clean = np.where(finite, points.values, np.nan)

    def per_bucket(ufunc: np.ufunc, values: np.ndarray) -> list:
        return ufunc.reduceat(values, cuts).tolist() if len(cuts) else []

    out = {
        "b": bucket[cuts].tolist(),
        "n": np.diff(np.r_[cuts, len(bucket)]).tolist(),
        "nf": per_bucket(np.add, finite.astype(np.int64)),
        "ss": per_bucket(np.add, points.steps.astype(np.float64)),
        "es": per_bucket(np.add, points.epochs),
        "vs": per_bucket(np.add, np.where(finite, points.values, 0.0)),
        # NULL where no value of the bucket is finite (Postgres's min/max would take NaN for a value).
        "mn": [v if v == v else None for v in per_bucket(np.fmin, clean)],
        "mx": [v if v == v else None for v in per_bucket(np.fmax, clean)],
    }
    if not out["b"] or out["b"][-1] != b1:
        for key, empty in (
            ("b", b1),
            ("n", 0),
            ("nf", 0),
            ("ss", 0.0),
            ("es", 0.0),
            ("vs", 0.0),
            ("mn", None),
            ("mx", None),
        ):
            out[key].append(empty)
    return out


def json_floats(values: np.ndarray) -> list[float | None]:
    """NaN and infinity (a diverged run) become null: JSON has no spelling for them."""
    out = values.tolist()
    if not np.isfinite(values).all():
        out = [v if np.isfinite(v) else None for v in out]
    return out


def _to_series(
    name: str,
    steps: np.ndarray,
    epochs: np.ndarray,
    values: np.ndarray,
    max_points: int,
    arrays: bool = False,
) -> Series:
    if len(steps) <= max_points:
        if arrays:
            return Series(name, steps, epochs, values, len(steps), False)  # type: ignore[arg-type]
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
