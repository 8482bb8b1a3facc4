"""query indexes and metric rollups: what the job list and long-series reads need at scale

Revision ID: 0003_query_indexes
Revises: 0002_sweeps
Create Date: 2026-11-27 06:00:00

``metric_rollups`` is the cache of per-bucket aggregates that downsampled reads of long series use
(see models.metrics). On jobs: a verdict index for the list's most common filter besides status,
an index on the summary's headline metric so sorting by it stops at the page's end, GIN indexes
for the containment tests that tag and spec filters add (api.services.query; declared empty on
SQLite), and on Postgres a TOAST target of a whole page, so that a filter on a dotted path reads
each candidate row's JSON in place instead of fetching and decompressing it (rows written before
keep their storage until they are next updated). See benchmarks/query.py for the figures.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

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
    op.create_index(
        "ix_jobs_project_verdict_created", "jobs", ["project_id", "verdict", "created_at"], unique=False
    )
    op.create_index(
        "ix_jobs_tags", "jobs", ["tags"], unique=False, postgresql_using="gin", sqlite_where=sa.text("0")
    )
    op.create_index(
        "ix_jobs_spec",
        "jobs",
        ["spec"],
        unique=False,
        postgresql_using="gin",
        postgresql_ops={"spec": "jsonb_path_ops"},
        sqlite_where=sa.text("0"),
    )
    summary = sa.table("jobs", sa.column("summary", sa.JSON().with_variant(postgresql.JSONB(), "postgresql")))
    op.create_index(
        "ix_jobs_project_best_val_loss",
        "jobs",
        [sa.column("project_id"), summary.c.summary[("best_val_loss",)].as_float(), sa.column("id")],
        unique=False,
    )
    if op.get_bind().dialect.name == "postgresql":
        # A job row (2-3 kB with its spec and summary) stays whole in its page: no compression and
        # no out-of-line TOAST value for a dotted-path filter to fetch and expand on every row.
        op.execute("ALTER TABLE jobs SET (toast_tuple_target = 8160)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE jobs RESET (toast_tuple_target)")
    op.drop_index("ix_jobs_project_best_val_loss", table_name="jobs")
    op.drop_index("ix_jobs_spec", table_name="jobs")
    op.drop_index("ix_jobs_tags", table_name="jobs")
    op.drop_index("ix_jobs_project_verdict_created", table_name="jobs")
    op.drop_index("ix_metric_rollups_last_step", table_name="metric_rollups")
    op.drop_table("metric_rollups")
