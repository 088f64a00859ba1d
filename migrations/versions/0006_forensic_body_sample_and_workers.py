"""queue: bounded forensic bodies (prefix, length, SHA-256); archive_workers

``archive_queue.last_body`` kept a bad body whole (hundreds of MB). From here on it keeps
at most 64 KiB, with the whole body's length in ``last_body_bytes`` and its SHA-256 in
``last_body_sha256``. Bodies stored before are cut the same way, their length and hash
taken first, so every row with a body has all three.

``archive_workers``: one row per running worker, where it says whether its endpoint is
usable (``archiver check`` and ``archiver status`` report the ones that are not).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PREFIX_BYTES = 64 * 1024
"""``archiver.outcomes.FORENSIC_PREFIX_BYTES`` when this migration was written (kept fixed here)."""
SQLITE_BATCH_BYTES = 64 * 1024 * 1024
"""Bodies read at once while hashing on SQLite (one larger body is read alone)."""


def _clock(dialect: str) -> str:
    if dialect == "postgresql":
        return "extract(epoch from clock_timestamp())"
    return "((julianday('now') - 2440587.5) * 86400.0)"


def upgrade() -> None:
    bind = op.get_bind()
    dialect = bind.dialect.name
    # Plain ADD COLUMN (no batch copy on SQLite): the table may hold large bodies.
    op.add_column("archive_queue", sa.Column("last_body_bytes", sa.BigInteger(), nullable=True))
    op.add_column("archive_queue", sa.Column("last_body_sha256", sa.Text(), nullable=True))
    if dialect == "postgresql":
        # SET expressions all read the row as it was: length and hash are of the whole body.
        op.execute(
            "UPDATE archive_queue SET last_body_bytes = octet_length(last_body), "
            "last_body_sha256 = encode(sha256(last_body), 'hex'), "
            f"last_body = substring(last_body from 1 for {PREFIX_BYTES}) "
            "WHERE last_body IS NOT NULL"
        )
    else:
        _sample_sqlite_bodies(bind)

    clock = sa.text(_clock(dialect))
    op.create_table(
        "archive_workers",
        sa.Column("owner", sa.Text(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("base_url", sa.Text(), nullable=True),
        sa.Column("state_since", sa.Float(), nullable=False, server_default=clock),
        sa.Column("started_at", sa.Float(), nullable=False, server_default=clock),
        sa.Column("updated_at", sa.Float(), nullable=False, server_default=clock),
        sa.PrimaryKeyConstraint("owner", name=op.f("pk_archive_workers")),
        comment="One row per running worker: is its endpoint usable; see archiver/workers.py",
    )


def _sample_sqlite_bodies(bind: sa.engine.Connection) -> None:
    """SQLite has no SHA-256 function: hash in Python, a batch of bodies at a time."""
    sizes = bind.execute(
        sa.text("SELECT id, length(last_body) FROM archive_queue WHERE last_body IS NOT NULL ORDER BY id")
    ).fetchall()
    batch: list[str] = []
    held = 0
    for rid, size in sizes:
        if batch and held + int(size) > SQLITE_BATCH_BYTES:
            _sample_sqlite_batch(bind, batch)
            batch, held = [], 0
        batch.append(rid)
        held += int(size)
    if batch:
        _sample_sqlite_batch(bind, batch)


def _sample_sqlite_batch(bind: sa.engine.Connection, ids: list[str]) -> None:
    select = sa.text("SELECT id, last_body FROM archive_queue WHERE id IN :ids").bindparams(
        sa.bindparam("ids", expanding=True)
    )
    updates = [
        {
            "rid": rid,
            "prefix": bytes(body[:PREFIX_BYTES]),
            "size": len(body),
            "sha": hashlib.sha256(body).hexdigest(),
        }
        for rid, body in bind.execute(select, {"ids": ids}).fetchall()
    ]
    if updates:
        bind.execute(
            sa.text(
                "UPDATE archive_queue SET last_body = :prefix, last_body_bytes = :size, "
                "last_body_sha256 = :sha WHERE id = :rid"
            ).bindparams(sa.bindparam("prefix", type_=sa.LargeBinary())),
            updates,
        )


def downgrade() -> None:
    # The cut bodies stay cut: what was dropped is gone (their hash and length go too).
    op.drop_table("archive_workers")
    with op.batch_alter_table("archive_queue", schema=None) as batch_op:
        batch_op.drop_column("last_body_sha256")
        batch_op.drop_column("last_body_bytes")
