"""input_item_lists: the fields an input-item list carries besides its items

DashScope's ``GET /responses/{id}/input_items`` answers with the response's ``id``,
``model``, ``created_at`` (in milliseconds, where its Response object has seconds) and,
for chained turns, ``previous_response_id`` beside the page. They were dropped; now one
row per response keeps them: ``created_at`` as a time whichever unit it came in,
``model``, ``previous_response_id``, and ``extra`` for any other field. OpenAI's lists
carry none, so their responses get no row. Filled when input items are fetched
(``--with-input-items``), from this version on.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "input_item_lists",
        sa.Column("response_id", sa.String(length=256), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("model", sa.Text(), nullable=True),
        sa.Column("previous_response_id", sa.String(length=256), nullable=True),
        sa.Column(
            "extra",
            sa.JSON(none_as_null=True).with_variant(
                postgresql.JSONB(none_as_null=True, astext_type=sa.Text()), "postgresql"
            ),
            nullable=True,
        ),
        sa.Column("change_seq", sa.BigInteger(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("response_id", name=op.f("pk_input_item_lists")),
        comment="The fields an input-item list carries besides its items (DashScope: model, created_at)",
        sqlite_with_rowid=False,
    )


def downgrade() -> None:
    op.drop_table("input_item_lists")
