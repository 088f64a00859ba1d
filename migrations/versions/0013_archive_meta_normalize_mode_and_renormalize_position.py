"""archive_meta: the archive's normalize mode and the position of an unfinished renormalize

One row per fact (``name``, ``value``): ``normalize`` (``full`` or ``summary``; no row
means ``full``, which is what every archive written before held), ``projection`` (the
version of the normalization the oldest rows were built by) and ``renormalize``
(JSON: what an interrupted ``archiver renormalize`` was doing and the last ID it
committed, so a rerun resumes there). See archiver/projection.py.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


PROJECTION_NOW = "2"
"""archiver.projection.PROJECTION_VERSION when this migration was written (rows without copies)."""


def upgrade() -> None:
    op.create_table(
        "archive_meta",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_archive_meta")),
        comment="Facts about the whole archive: its normalize mode, the position of an unfinished "
        "renormalize; see archiver/projection.py",
    )
    # An archive without responses holds no rows of an older projection. One with
    # responses gets no row: they may be from before 0010 (archiver status then says to
    # run renormalize --all, which records the version).
    bind = op.get_bind()
    if bind.execute(sa.text("SELECT id FROM responses LIMIT 1")).first() is None:
        op.execute(
            sa.text("INSERT INTO archive_meta (name, value) VALUES ('projection', :v)").bindparams(
                v=PROJECTION_NOW
            )
        )


def downgrade() -> None:
    op.drop_table("archive_meta")
