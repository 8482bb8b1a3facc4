"""jobs.queue: the Celery queue of the pool that runs each job

Revision ID: 0004_job_queue
Revises: 0003_query_indexes
Create Date: 2026-11-27 07:20:00

A reaper re-enqueues stale and queued jobs; with several worker pools (one SADDLE_QUEUE each)
sharing a database it must put each job back on its own pool's queue, not on the reaper's.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_job_queue"
down_revision: str | None = "0003_query_indexes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("queue", sa.String(length=200), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "queue")
