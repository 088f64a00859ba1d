"""responses.raw compressed: raw_codec, raw_dict_id and archive_dictionaries

New bodies are written as zstd frames, with a dictionary trained on the archive's own
bodies once there are enough (see archiver/codec.py). ``raw_codec`` records how each
row's ``raw`` is stored: NULL (rows written before this migration, left as they are) or
``identity`` for the bytes as received, ``zstd``, or ``zstd+dict`` with ``raw_dict_id``
naming its row in ``archive_dictionaries``. ``raw_sha256`` stays the hash of the body as
received.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "archive_dictionaries",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("trained_on", sa.BigInteger(), nullable=False),
        sa.Column("samples", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_archive_dictionaries")),
        comment="zstd dictionaries that responses.raw is compressed with; see archiver/codec.py",
    )
    with op.batch_alter_table("responses") as batch:
        batch.add_column(sa.Column("raw_codec", sa.Text(), nullable=True))
        batch.add_column(sa.Column("raw_dict_id", sa.Integer(), nullable=True))


def downgrade() -> None:
    # Compressed rows cannot go back to a schema that has no raw_codec: refuse rather than
    # leave bodies nobody can read.
    bind = op.get_bind()
    compressed = bind.execute(
        sa.text("SELECT count(*) FROM responses WHERE raw_codec IS NOT NULL AND raw_codec <> 'identity'")
    ).scalar()
    if compressed:
        raise RuntimeError(f"{compressed} responses have compressed raw bodies; cannot downgrade below 0008")
    with op.batch_alter_table("responses") as batch:
        batch.drop_column("raw_dict_id")
        batch.drop_column("raw_codec")
    op.drop_table("archive_dictionaries")
