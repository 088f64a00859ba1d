"""responses.secret_masked: the derived rows of this body mask a secret the server echoed

A server may echo the API key into a body. ``raw`` keeps the body as received, key and
all; the rows derived from it mask every registered secret (archiver.echoes). A rebuild
(``archiver renormalize``, ``archiver compact``) re-derives the rows from ``raw`` and can
only mask the secrets its own process knows: run from a shell without the daemon's key,
it wrote the key back into the derived rows, unmasked. The writer now records
``secret_masked`` (true; NULL otherwise) and a rebuild that does not find a secret in such
a body leaves its rows as they are and says so. Rows written before carry NULL: the
README says to run one renormalize with the daemon's keys to flag them.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # ADD COLUMN of a nullable column without a default: no rewrite on either database.
    op.add_column("responses", sa.Column("secret_masked", sa.Boolean(), nullable=True))


def downgrade() -> None:
    # SQLite before 3.35 has no DROP COLUMN: a batch rebuild of the table (as 0015's downgrade).
    if op.get_bind().dialect.name == "sqlite" and sqlite3.sqlite_version_info < (3, 35):
        with op.batch_alter_table("responses") as batch:
            batch.drop_column("secret_masked")
    else:
        op.execute("ALTER TABLE responses DROP COLUMN secret_masked")
