"""metric_chunks: a series stored as one row per block of steps instead of one row per point

Revision ID: 0009_metric_chunks
Revises: 0008_worker_architectures
Create Date: 2026-12-03 12:00:00

Each row holds up to 4,096 points of one series as three packed arrays (big-endian int64 steps,
float64 epochs and values; NaN and ±inf as themselves, on SQLite too). The points of
``metric_points`` move over, series by series in step order, and the table goes. On Postgres the
move is one statement (int8send/float8send write the same bytes the service does); on SQLite
(the embedded default, small databases) it runs through Python. Rollups stay: they aggregate
the same points.
"""

from collections.abc import Sequence
from itertools import groupby

import numpy as np
import sqlalchemy as sa
from alembic import op

revision: str = "0009_metric_chunks"
down_revision: str | None = "0008_worker_architectures"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHUNK_POINTS = 4096
STEP, FLOAT = np.dtype(">i8"), np.dtype(">f8")

PG_MOVE = f"""
INSERT INTO metric_chunks (job_id, name, first_step, last_step, n, steps, epochs, vals)
SELECT job_id, name, min(step), max(step), count(*),
       string_agg(int8send(step), ''::bytea ORDER BY step),
       string_agg(float8send(epoch), ''::bytea ORDER BY step),
       string_agg(float8send(coalesce(value, 'NaN')), ''::bytea ORDER BY step)
FROM (
    SELECT *, (row_number() OVER (PARTITION BY job_id, name ORDER BY step) - 1) / {CHUNK_POINTS} AS chunk
    FROM metric_points
) p
GROUP BY job_id, name, chunk
"""


def upgrade() -> None:
    op.create_table(
        "metric_chunks",
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("first_step", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("last_step", sa.BigInteger(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("steps", sa.LargeBinary(), nullable=False),
        sa.Column("epochs", sa.LargeBinary(), nullable=False),
        sa.Column("vals", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("job_id", "name", "first_step"),
    )
    op.create_index("ix_metric_chunks_last_step", "metric_chunks", ["job_id", "name", "last_step"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_MOVE)
    else:
        _move_in_python()
    op.drop_table("metric_points")


def _move_in_python() -> None:
    conn = op.get_bind()
    rows = conn.execute(
        sa.text("SELECT job_id, name, step, epoch, value FROM metric_points ORDER BY job_id, name, step")
    )
    chunks = sa.table(
        "metric_chunks",
        *(
            sa.column(c)
            for c in ("job_id", "name", "first_step", "last_step", "n", "steps", "epochs", "vals")
        ),
    )
    for (job_id, name), series in groupby(rows, key=lambda r: (r[0], r[1])):
        points = list(series)
        for a in range(0, len(points), CHUNK_POINTS):
            part = points[a : a + CHUNK_POINTS]
            steps = np.array([p[2] for p in part], dtype=np.int64)
            epochs = np.array([p[3] for p in part], dtype=np.float64)
            values = np.array([np.nan if p[4] is None else p[4] for p in part], dtype=np.float64)
            conn.execute(
                chunks.insert().values(
                    job_id=job_id,
                    name=name,
                    first_step=int(steps[0]),
                    last_step=int(steps[-1]),
                    n=len(part),
                    steps=steps.astype(STEP).tobytes(),
                    epochs=epochs.astype(FLOAT).tobytes(),
                    vals=values.astype(FLOAT).tobytes(),
                )
            )


def downgrade() -> None:
    op.create_table(
        "metric_points",
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("step", sa.BigInteger(), nullable=False),
        sa.Column("epoch", sa.Float(), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("job_id", "name", "step"),
    )
    conn = op.get_bind()
    sqlite = conn.dialect.name == "sqlite"
    points = sa.table("metric_points", *(sa.column(c) for c in ("job_id", "name", "step", "epoch", "value")))
    for job_id, name, steps, epochs, values in conn.execute(
        sa.text("SELECT job_id, name, steps, epochs, vals FROM metric_chunks")
    ):
        s = np.frombuffer(steps, STEP).tolist()
        e = np.frombuffer(epochs, FLOAT).tolist()
        v = np.frombuffer(values, FLOAT).tolist()
        conn.execute(
            points.insert(),
            [
                {
                    "job_id": job_id,
                    "name": name,
                    "step": a,
                    "epoch": b,
                    "value": None if sqlite and c != c else c,
                }
                for a, b, c in zip(s, e, v, strict=True)
            ],
        )
    op.drop_index("ix_metric_chunks_last_step", table_name="metric_chunks")
    op.drop_table("metric_chunks")
