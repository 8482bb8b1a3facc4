"""worker architectures: what each live worker can build, for model.arch validation

Revision ID: 0008_worker_architectures
Revises: 0007_dataset_names
Create Date: 2026-12-03 10:00:00

One row per worker (its Celery hostname) with the architectures it offers (built-ins and its
``saddle.models`` entry points) and when it last said so; rows older than the TTL are ignored
(see models.archs).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008_worker_architectures"
down_revision: str | None = "0007_dataset_names"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "worker_architectures",
        sa.Column("worker", sa.String(length=200), nullable=False),
        sa.Column("archs", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("worker"),
    )


def downgrade() -> None:
    op.drop_table("worker_architectures")
