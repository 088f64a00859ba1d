"""queue: database-clock defaults, so other applications can INSERT just an id

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIME_COLUMNS = ("next_attempt_at", "enqueued_at", "updated_at")


def _clock(dialect: str) -> str:
    if dialect == "postgresql":
        return "extract(epoch from clock_timestamp())"
    return "((julianday('now') - 2440587.5) * 86400.0)"


def upgrade() -> None:
    clock = sa.text(_clock(op.get_bind().dialect.name))
    # SQLite cannot alter a default in place: batch mode copies the table once.
    with op.batch_alter_table("archive_queue", schema=None) as batch_op:
        for column in TIME_COLUMNS:
            batch_op.alter_column(
                column, existing_type=sa.Float(), existing_nullable=False, server_default=clock
            )


def downgrade() -> None:
    with op.batch_alter_table("archive_queue", schema=None) as batch_op:
        for column in TIME_COLUMNS:
            batch_op.alter_column(
                column, existing_type=sa.Float(), existing_nullable=False, server_default=None
            )
