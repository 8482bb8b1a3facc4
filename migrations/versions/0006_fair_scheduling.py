"""fair scheduling: per-project turns and the running-jobs quota

Revision ID: 0006_fair_scheduling
Revises: 0005_nan_metric_values
Create Date: 2026-12-02 14:30:00

``projects.last_started_at`` orders projects for free worker slots (the one served longest ago
first); ``jobs.parked_at`` marks a queued job whose delivery found its project at its running quota
(it is sent again when one of the project's jobs ends); ``ix_jobs_waiting`` is the partial index
over queued jobs that every claim's fair turn reads (see dispatch.fairness).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_fair_scheduling"
down_revision: str | None = "0005_nan_metric_values"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("projects", sa.Column("last_started_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("jobs", sa.Column("parked_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_jobs_waiting",
        "jobs",
        ["queue", "project_id", "created_at"],
        unique=False,
        postgresql_where=sa.text("status = 'queued'"),
        sqlite_where=sa.text("status = 'queued'"),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_waiting", table_name="jobs")
    op.drop_column("jobs", "parked_at")
    op.drop_column("projects", "last_started_at")
