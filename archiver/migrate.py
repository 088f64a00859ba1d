"""Migrations: bringing a database's schema to the one this archiver writes (alembic).

Every command starts by reading the stamped revision with plain SQL: a database already
at :data:`SCHEMA_HEAD` never imports alembic, and a new SQLite archive is built from a
snapshot (:mod:`archiver.sqlite_snapshot`) rather than by running every migration.
"""

from __future__ import annotations

import importlib.resources
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from archiver.db_retry import is_transient_db_error
from archiver.errors import SchemaError
from archiver.foreign_tables import refuse_a_foreign_database
from archiver.transactions import is_postgres, statement_at_a_time

_MIGRATION_LOCK_ID = 0x61726368  # "arch": PostgreSQL advisory lock key for migrations


def _migrations_location() -> str:
    return str(importlib.resources.files("archiver.migrations"))


def alembic_config(connection: Connection | None = None) -> Any:
    """An alembic Config pointing at the bundled migrations."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", _migrations_location())
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def _upgrade(connection: Connection) -> None:
    from alembic import command

    if connection.dialect.name == "postgresql":
        # Several instances may start at once: one migrates, the others wait and find it done.
        connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_ID})
    command.upgrade(alembic_config(connection), "head")


def _current_revision(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str | None:
    """The newest migration revision shipped with this archiver."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


SCHEMA_HEAD = "0017"
"""The newest migration shipped (a test checks it against alembic's head). Knowing it
lets every command skip importing alembic when the database is already current."""


async def _stamped_revision(engine: AsyncEngine) -> str | None:
    """The revision in alembic_version, read with plain SQL (None if there is none)."""
    # Every command starts with this read: on SQLite it must not wait for the write lock.
    async with statement_at_a_time(engine) as conn:
        try:
            return (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
        except DBAPIError as exc:
            if (
                is_transient_db_error(exc)
                and "no such table" not in str(exc)
                and "does not exist" not in str(exc)
            ):
                raise
            return None


async def migrate(engine: AsyncEngine) -> None:
    """Bring the database up to the current schema (idempotent, safe to run concurrently)."""
    stamped = await _stamped_revision(engine)
    if stamped == SCHEMA_HEAD:
        return
    if stamped is None and not is_postgres(engine):
        from archiver.sqlite_snapshot import build_from_snapshot

        await refuse_a_foreign_database(engine)
        if await build_from_snapshot(engine, SCHEMA_HEAD):  # a new archive, faster than alembic
            return
    await migrate_with_alembic(engine)


async def migrate_with_alembic(engine: AsyncEngine) -> None:
    """:func:`migrate` by running the migrations, also for a new SQLite archive (which
    :func:`migrate` builds from :mod:`archiver.sqlite_snapshot`, made by this)."""
    async with engine.connect() as conn:
        current = await conn.run_sync(_current_revision)
    head = head_revision()
    if current == head:
        return
    if current is None or not known_revision(current):
        await refuse_a_foreign_database(engine)
    if current is not None and not known_revision(current):
        raise SchemaError(
            f"the database schema ({current}) is newer than this archiver knows; upgrade archiver"
        )
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade)


def known_revision(revision: str) -> bool:
    """True when ``revision`` is one of the migrations shipped with this archiver."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config())
    try:
        return script.get_revision(revision) is not None
    except Exception:
        return False


async def schema_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at (None for an empty database)."""
    async with statement_at_a_time(engine) as conn:
        return await conn.run_sync(_current_revision)
