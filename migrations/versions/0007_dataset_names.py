"""dataset names: unique per project, and image uploads' facts

Revision ID: 0007_dataset_names
Revises: 0006_fair_scheduling
Create Date: 2026-12-03 10:00:00

A spec may name an upload by its name (``data.dataset: my-scans``), so a name is unique within its
project (``uq_datasets_project_name``). Rows from before this revision may share a name: the oldest
keeps it and each later one is renamed ``<name>~<first 8 digits of its id>`` (ids, which every stored
job uses, do not change). ``datasets.image_info`` holds an image upload's source format, class names
and per-channel statistics.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0007_dataset_names"
down_revision: str | None = "0006_fair_scheduling"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSONType = sa.JSON().with_variant(JSONB(), "postgresql")
NAME_LENGTH = 200


def upgrade() -> None:
    op.add_column("datasets", sa.Column("image_info", JSONType, nullable=True))
    _rename_duplicates()
    with op.batch_alter_table("datasets") as batch:
        batch.create_unique_constraint("uq_datasets_project_name", ["project_id", "name"])


def _rename_duplicates() -> None:
    datasets = sa.table(
        "datasets", sa.column("id"), sa.column("project_id"), sa.column("name"), sa.column("created_at")
    )
    conn = op.get_bind()
    rows = conn.execute(
        sa.select(datasets.c.id, datasets.c.project_id, datasets.c.name).order_by(
            datasets.c.project_id, datasets.c.name, datasets.c.created_at, datasets.c.id
        )
    ).all()
    seen: set[tuple[str, str]] = set()
    for dataset_id, project_id, name in rows:
        if (project_id, name) not in seen:
            seen.add((project_id, name))
            continue
        suffix = "~" + dataset_id[:8]
        conn.execute(
            sa.update(datasets)
            .where(datasets.c.id == dataset_id)
            .values(name=name[: NAME_LENGTH - len(suffix)] + suffix)
        )


def downgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.drop_constraint("uq_datasets_project_name", type_="unique")
    op.drop_column("datasets", "image_info")
