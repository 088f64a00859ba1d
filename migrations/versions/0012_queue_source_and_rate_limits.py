"""archive_queue.source and archive_rate_limits: several provider accounts in one archive

``archive_queue.source`` names the source (provider account, see archiver/sources.py)
an ID is fetched with. Existing rows, and plain INSERTs that do not name one, are
``default``. ``archive_rate_limits`` holds one row per source with a fleet-wide
``max_rps``: the next free send time of its request schedule (see archiver/fleet_rate.py).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("archive_queue") as batch:
        batch.add_column(sa.Column("source", sa.String(64), nullable=False, server_default="default"))
    op.create_index(
        "ix_archive_queue_source_state_next_attempt_at",
        "archive_queue",
        ["source", "state", "next_attempt_at"],
    )
    op.create_table(
        "archive_rate_limits",
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("next_free_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("source", name=op.f("pk_archive_rate_limits")),
        comment="Fleet-wide request schedule per source with a max_rps; see archiver/fleet_rate.py",
    )


def downgrade() -> None:
    op.drop_table("archive_rate_limits")
    op.drop_index("ix_archive_queue_source_state_next_attempt_at", table_name="archive_queue")
    with op.batch_alter_table("archive_queue") as batch:
        batch.drop_column("source")
