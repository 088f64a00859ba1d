"""archive_queue.lease_expiries: crashes are counted apart from the provider's attempts

``attempts`` counts answers from the provider (and fetches that timed out). A lease that
expires means the worker holding the row died, hung or could not write (disk full, a
read-only database): that is not the ID's fault, so the expiry now gives the claim's
attempt back and counts one ``lease_expiries`` instead. A row whose lease expired
``--max-attempts`` times ends ``failed`` (a body that kills every worker that fetches it
cannot loop for ever). ``archiver retry`` resets both counters.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("archive_queue") as batch:
        batch.add_column(sa.Column("lease_expiries", sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("archive_queue") as batch:
        batch.drop_column("lease_expiries")
