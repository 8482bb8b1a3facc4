"""query indexes and metric rollups: what the job list and long-series reads need at scale

Revision ID: 0003_query_indexes
Revises: 0002_sweeps
Create Date: 2026-11-27 06:00:00

``metric_rollups`` is the cache of per-bucket aggregates that downsampled reads of long series use
(see models.metrics). See benchmarks/query.py for the figures these were chosen by.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_query_indexes"
down_revision: str | None = "0002_sweeps"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "metric_rollups",
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("width", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("bucket", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("last_step", sa.BigInteger(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("n_finite", sa.Integer(), nullable=False),
        sa.Column("step_sum", sa.Float(), nullable=False),
        sa.Column("epoch_sum", sa.Float(), nullable=False),
        sa.Column("value_sum", sa.Float(), nullable=False),
        sa.Column("value_min", sa.Float(), nullable=True),
        sa.Column("value_max", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("job_id", "name", "width", "bucket"),
    )
    op.create_index(
        "ix_metric_rollups_last_step", "metric_rollups", ["job_id", "name", "last_step"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_metric_rollups_last_step", table_name="metric_rollups")
    op.drop_table("metric_rollups")
