"""archive_queue: partial state indexes, WITHOUT ROWID on SQLite; responses.model unindexed

The queue's two indexes on ``state`` held every row, archived ones too: about 60 bytes per
archived response spent on rows no query looks for. They become partial indexes that
hold only the rows the queue machinery searches: ``pending`` rows by source and due time,
by due time and by enqueue time; ``in_flight`` rows by lease expiry; ``failed`` and
``not_found`` rows by state and update time (``status``'s recent errors). An archived row
is in none of them.

On SQLite the table is rebuilt ``WITHOUT ROWID`` (the primary key is the table, so each
ID is stored once, not in the table and again in its primary-key index): one
``INSERT ... SELECT`` copies the rows, in the migration's transaction. PostgreSQL has no
rowid: only its indexes change (building them reads the queue once per index).

``ix_responses_model`` is dropped: ``model`` takes a handful of values, so the index
only helps a query for a rare model and costs about 19 bytes per response. README
("Decisions") shows how to create it again.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PARTIAL_INDEXES = (
    ("ix_archive_queue_pending_source_next_attempt_at", ["source", "next_attempt_at"], "state = 'pending'"),
    ("ix_archive_queue_pending_next_attempt_at", ["next_attempt_at"], "state = 'pending'"),
    ("ix_archive_queue_pending_enqueued_at", ["enqueued_at"], "state = 'pending'"),
    ("ix_archive_queue_in_flight_lease_expires_at", ["lease_expires_at"], "state = 'in_flight'"),
    (
        "ix_archive_queue_failed_not_found_updated_at",
        ["state", "updated_at"],
        "state = 'failed' OR state = 'not_found'",
    ),
)
FULL_INDEXES = (
    ("ix_archive_queue_state_next_attempt_at", ["state", "next_attempt_at"]),
    ("ix_archive_queue_source_state_next_attempt_at", ["source", "state", "next_attempt_at"]),
)

_SQLITE_CLOCK = "((julianday('now') - 2440587.5) * 86400.0)"
SQLITE_QUEUE = f"""CREATE TABLE {{name}} (
    id VARCHAR(256) NOT NULL,
    state VARCHAR(16) DEFAULT 'pending' NOT NULL,
    attempts INTEGER DEFAULT '0' NOT NULL,
    polls INTEGER DEFAULT '0' NOT NULL,
    next_attempt_at FLOAT DEFAULT ({_SQLITE_CLOCK}) NOT NULL,
    enqueued_at FLOAT DEFAULT ({_SQLITE_CLOCK}) NOT NULL,
    updated_at FLOAT DEFAULT ({_SQLITE_CLOCK}) NOT NULL,
    lease_owner VARCHAR(128),
    lease_token VARCHAR(36),
    lease_expires_at FLOAT,
    last_status_code INTEGER,
    last_error TEXT,
    last_body BLOB,
    response_created_at FLOAT,
    last_body_bytes BIGINT,
    last_body_sha256 TEXT,
    lease_expiries INTEGER DEFAULT '0' NOT NULL,
    source VARCHAR(64) DEFAULT 'default' NOT NULL,
    CONSTRAINT pk_archive_queue PRIMARY KEY (id)
){{options}}"""
"""archive_queue as 0013 left it on SQLite (``options``: `` WITHOUT ROWID`` or nothing)."""
QUEUE_COLUMNS = (
    "id, state, attempts, polls, next_attempt_at, enqueued_at, updated_at, lease_owner, "
    "lease_token, lease_expires_at, last_status_code, last_error, last_body, response_created_at, "
    "last_body_bytes, last_body_sha256, lease_expiries, source"
)


def upgrade() -> None:
    for name, _ in FULL_INDEXES:
        op.drop_index(name, table_name="archive_queue")
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_sqlite_queue(" WITHOUT ROWID")
    for name, columns, where in PARTIAL_INDEXES:
        op.create_index(
            name, "archive_queue", columns, sqlite_where=sa.text(where), postgresql_where=sa.text(where)
        )
    op.drop_index("ix_responses_model", table_name="responses")


def downgrade() -> None:
    op.create_index("ix_responses_model", "responses", ["model"])
    for name, _, _ in PARTIAL_INDEXES:
        op.drop_index(name, table_name="archive_queue")
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_sqlite_queue("")
    for name, columns in FULL_INDEXES:
        op.create_index(name, "archive_queue", columns)


def _rebuild_sqlite_queue(options: str) -> None:
    """Copy the queue into a new table with ``options``, in one statement, and put it in its place.

    What others built on the queue survives (docs/schema.md invites queries of one's own):
    a view naming ``archive_queue`` would make the RENAME fail ("error in view ...") while
    the old table is gone, so the RENAME runs with ``legacy_alter_table`` (it then checks
    and rewrites no view or trigger; they name ``archive_queue``, which exists again after
    it); the queue's own triggers, dropped with the old table, are created again.
    """
    bind = op.get_bind()
    triggers = [
        str(sql)
        for (sql,) in bind.exec_driver_sql(
            "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'archive_queue'"
        )
    ]
    op.execute(SQLITE_QUEUE.format(name="_archive_queue_new", options=options))
    op.execute(f"INSERT INTO _archive_queue_new ({QUEUE_COLUMNS}) SELECT {QUEUE_COLUMNS} FROM archive_queue")
    op.execute("PRAGMA legacy_alter_table = ON")
    try:
        op.execute("DROP TABLE archive_queue")
        op.execute("ALTER TABLE _archive_queue_new RENAME TO archive_queue")
    finally:
        op.execute("PRAGMA legacy_alter_table = OFF")
    for sql in triggers:
        bind.exec_driver_sql(sql)  # as written: text() would take a ':name' in it for a parameter
