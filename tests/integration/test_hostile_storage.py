"""Hostile tests of issue 17's storage changes: migration 0014 (partial queue indexes,
SQLite's ``WITHOUT ROWID`` rebuild), the queue gauges' rare ``archived`` recount, and the
short SQLite timestamps.

Each test here reproduces a fault found by hand against real databases.
"""

from __future__ import annotations

from typing import Any

import pytest
from alembic import command
from sqlalchemy import text

from archiver.db import alembic_config, create_engine, head_revision, migrate, schema_revision
from archiver.queue import QueueStore

pytestmark = pytest.mark.timeout(120)


def _revision_before(what: str) -> str:
    """The revision before the one whose docstring says ``what`` (renumbered on rebase)."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config(None))
    for revision in script.walk_revisions():
        if what in (revision.doc or ""):
            assert isinstance(revision.down_revision, str)
            return revision.down_revision
    raise AssertionError(f"no migration says {what!r}")


async def _at_revision_before_rebuild(url: str) -> Any:
    engine = create_engine(url)
    before = _revision_before("partial state indexes")
    async with engine.begin() as conn:
        await conn.run_sync(lambda c: command.upgrade(alembic_config(c), before))
        await conn.execute(
            text(
                "INSERT INTO archive_queue (id, state, next_attempt_at, enqueued_at, updated_at) "
                "VALUES ('resp_a', 'pending', 1, 1, 1), ('resp_b', 'archived', 1, 1, 1)"
            )
        )
    return engine


async def test_an_operators_view_on_the_queue_survives_the_sqlite_rebuild(sqlite_url: str) -> None:
    """docs/schema.md invites analysts' own queries; a view over archive_queue (a dashboard's
    per-state counts) made the rebuild's ``ALTER TABLE ... RENAME`` fail ("error in view
    ...: no such table: main.archive_queue"), and since every command migrates first,
    every command of the upgraded archiver then refused the archive."""
    engine = await _at_revision_before_rebuild(sqlite_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "CREATE VIEW my_queue_stats AS "
                    "SELECT state, count(*) AS n FROM archive_queue GROUP BY state"
                )
            )
        await migrate(engine)
        assert await schema_revision(engine) == head_revision()
        async with engine.connect() as conn:
            stats = dict((await conn.execute(text("SELECT state, n FROM my_queue_stats"))).fetchall())
        assert stats == {"pending": 1, "archived": 1}
        assert (await QueueStore(engine).counts())["pending"] == 1
    finally:
        await engine.dispose()


async def test_an_operators_trigger_on_the_queue_survives_the_sqlite_rebuild(sqlite_url: str) -> None:
    """``DROP TABLE`` drops the table's triggers with it: an operator's audit trigger on
    archive_queue vanished silently in the rebuild."""
    engine = await _at_revision_before_rebuild(sqlite_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE my_failures (id TEXT)"))
            await conn.exec_driver_sql(
                "CREATE TRIGGER my_failed_audit AFTER UPDATE OF state ON archive_queue "
                "WHEN new.state = 'failed' BEGIN INSERT INTO my_failures VALUES (new.id || ':failed'); END"
            )
        await migrate(engine)
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE archive_queue SET state = 'failed' WHERE id = 'resp_a'"))
        async with engine.connect() as conn:
            audited = (await conn.execute(text("SELECT id FROM my_failures"))).scalars().all()
        assert audited == ["resp_a:failed"]
    finally:
        await engine.dispose()
