"""metric_points.value and spectra.grad_norm may hold NaN on SQLite too (stored as NULL there)

Revision ID: 0005_nan_metric_values
Revises: 0004_job_queue
Create Date: 2026-12-02 14:20:00

A diverged run logs NaN losses and gradient norms. Postgres stores NaN in a double column; SQLite
turns NaN into NULL, which the NOT NULL constraint refused, so a diverged run on the embedded
default failed with an IntegrityError instead of getting its `diverged` verdict. The column becomes
nullable (and so is a spectrum's gradient norm, NaN at a diverged point);
models.tables.MetricValue writes NaN as NULL on SQLite and reads NULL back as NaN.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_nan_metric_values"
down_revision: str | None = "0004_job_queue"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("metric_points") as batch:
        batch.alter_column("value", existing_type=sa.Float(), nullable=True)
    with op.batch_alter_table("spectra") as batch:
        batch.alter_column("grad_norm", existing_type=sa.Float(), nullable=True)


def downgrade() -> None:
    op.execute("DELETE FROM metric_points WHERE value IS NULL")
    op.execute("DELETE FROM spectra WHERE grad_norm IS NULL")
    with op.batch_alter_table("spectra") as batch:
        batch.alter_column("grad_norm", existing_type=sa.Float(), nullable=False)
    with op.batch_alter_table("metric_points") as batch:
        batch.alter_column("value", existing_type=sa.Float(), nullable=False)
