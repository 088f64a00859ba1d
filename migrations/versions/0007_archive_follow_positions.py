"""archive_follow: where `archiver enqueue --follow` is in each followed file

One row per followed path: the file's identity (device and inode), the byte offset just
past the last complete line consumed, the lines consumed, a SHA-256 of up to 256 bytes
before the offset (checked on resume), and when it was saved. The row is written in the
transaction that queues the IDs read up to it (see archiver/follow.py).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "archive_follow",
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("device", sa.BigInteger(), nullable=False),
        sa.Column("inode", sa.BigInteger(), nullable=False),
        sa.Column("byte_offset", sa.BigInteger(), nullable=False),
        sa.Column("line_no", sa.BigInteger(), nullable=False),
        sa.Column("tail_sha256", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("path", name=op.f("pk_archive_follow")),
        comment="Where `archiver enqueue --follow` is in each followed file; see archiver/follow.py",
    )


def downgrade() -> None:
    op.drop_table("archive_follow")
