"""metric_chunks: the packed arrays compressed with lz4 instead of pglz (Postgres)

Revision ID: 0010_metric_chunks_lz4
Revises: 0009_metric_chunks
Create Date: 2026-12-02 22:00:00

A 1,000-point batch of five series stores five chunks of about 4.8 KB, past Postgres's 2 KB
TOAST threshold, so every array is compressed as it is inserted. With the default pglz that took
about 3 ms of a batch's 4 (benchmarks/ingest.py); lz4 does the same in a fraction of it, stores
about as small, and decompresses faster on reads. Values already stored keep their pglz encoding
(Postgres reads both). A server built without lz4 (or older than Postgres 14) keeps pglz: the
upgrade then only says so. SQLite has no such setting.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010_metric_chunks_lz4"
down_revision: str | None = "0009_metric_chunks"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# EXECUTE, so that a server without the syntax (before 14) fails at run time, where it is caught.
SET_COMPRESSION = """
DO $$
BEGIN
    EXECUTE 'ALTER TABLE metric_chunks ALTER COLUMN steps SET COMPRESSION {method},'
            ' ALTER COLUMN epochs SET COMPRESSION {method}, ALTER COLUMN vals SET COMPRESSION {method}';
EXCEPTION WHEN feature_not_supported OR syntax_error THEN
    RAISE NOTICE 'metric_chunks: compression {method} is not available here (%), pglz stays', SQLERRM;
END
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(SET_COMPRESSION.format(method="lz4"))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(SET_COMPRESSION.format(method="default"))
