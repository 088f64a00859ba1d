"""archive_workers: the source a worker serves and why it holds it (what, last error, next probe)

A worker whose circuit breaker is open, or whose key is refused, keeps its source's IDs
``pending`` without spending attempts. Its ``archive_workers`` row said so only in
``detail``. It now also records ``source``, ``hold_kind`` (``plain_404``, ``redirect``,
``connect``, ``5xx``, ``refused``, ``billing``; NULL while fetching), ``hold_error`` (the
last endpoint-wide error text, redacted) and ``next_probe_at`` (database-clock unix
seconds), so ``archiver status`` can say per source why its IDs wait (see
archiver/holds.py). Rows written before have NULLs there and keep working.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("source", "hold_kind", "hold_error", "next_probe_at")


def upgrade() -> None:
    with op.batch_alter_table("archive_workers") as batch:
        batch.add_column(sa.Column("source", sa.Text(), nullable=True))
        batch.add_column(sa.Column("hold_kind", sa.Text(), nullable=True))
        batch.add_column(sa.Column("hold_error", sa.Text(), nullable=True))
        batch.add_column(sa.Column("next_probe_at", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("archive_workers") as batch:
        for name in reversed(COLUMNS):
            batch.drop_column(name)
