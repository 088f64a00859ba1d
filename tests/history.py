"""Databases at an older schema revision, for tests of what a migration does to old rows."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from archiver.db import create_engine
from archiver.migrate import alembic_config


def revision_before(what: str) -> str:
    """The revision before the one whose docstring says ``what`` (migrations are renumbered
    when branches are rebased, so tests name a migration by what it does)."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config(None))
    for revision in script.walk_revisions():
        if what in (revision.doc or ""):
            assert isinstance(revision.down_revision, str)
            return revision.down_revision
    raise AssertionError(f"no migration says {what!r}")


@asynccontextmanager
async def engine_at(db_url: str, revision: str) -> AsyncIterator[AsyncEngine]:
    """An engine on ``db_url`` migrated up to ``revision`` only (disposed at the end)."""

    def upgrade(connection: Connection) -> None:
        from alembic import command

        command.upgrade(alembic_config(connection), revision)

    engine = create_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(upgrade)
        yield engine
    finally:
        await engine.dispose()
