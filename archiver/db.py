"""Database engines: URL handling, SQLite tuning, the database clock, and migrations.

SQLite runs in WAL mode with a busy timeout, and every transaction starts with
``BEGIN IMMEDIATE``: the write lock is taken up front, so two processes never deadlock
on a lock upgrade (the case that makes SQLite answer "database is locked" at once).
"""

from __future__ import annotations

import asyncio
import importlib.resources
import json
import os
import re
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import orjson
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy import event, text
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.util import await_

from archiver.errors import ConfigError, DatabaseUnavailable, SchemaError, first_line
from archiver.logs import get_logger
from archiver.redaction import redact

T = TypeVar("T")

SQLITE_BUSY_TIMEOUT_MS = 60_000
_MIGRATION_LOCK_ID = 0x61726368  # "arch": PostgreSQL advisory lock key for migrations


def normalize_database_url(url: str) -> URL:
    """Turn a URL as users write it into one with an asyncio driver.

    ``sqlite:///file.db`` -> ``sqlite+aiosqlite``; ``postgresql://`` and ``postgres://``
    -> ``postgresql+asyncpg``. A bare ``postgresql://`` with no host also honours the
    libpq ``PG*`` variables (through asyncpg).
    """
    raw = url.strip()
    if raw.startswith("postgres://"):
        raw = "postgresql://" + raw[len("postgres://") :]
    try:
        parsed = make_url(raw)
    except ArgumentError:
        raise ConfigError(f"not a database URL: {redact_url(raw)!r}") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite")
    if backend == "postgresql":
        return parsed.set(drivername="postgresql+asyncpg")
    raise ConfigError(f"unsupported database {backend!r}: use sqlite:/// or postgresql://")


_CREDENTIAL_PARAMETER = re.compile(r"(?i)pass|secret|token|key")
"""Query parameters whose value may be a credential (``password``, ``sslkey``, ...)."""


def redact_url(url: str | URL) -> str:
    """The URL as written, without its password (for logs, errors and ``status``).

    A password in the user info becomes ``***`` (one with an unescaped ``@`` too: the user
    info ends at the last ``@`` before the query), query parameters whose name contains
    pass/secret/token/key are dropped, and registered secrets are masked
    (:func:`archiver.redaction.redact`).
    """
    if isinstance(url, URL):
        text = url.render_as_string(hide_password=False)
    else:
        text = url.strip()
        try:
            make_url(text)
        except ArgumentError:
            return "<unparseable database URL>"
    scheme, sep, rest = text.partition("://")
    location, question, query = rest.partition("?")
    if sep and "@" in location and not location.startswith("/"):
        userinfo, _, host_and_path = location.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        location = f"{user}:***@{host_and_path}" if colon else f"{userinfo}@{host_and_path}"
    kept = [
        pair
        for pair in query.split("&")
        if pair and not _CREDENTIAL_PARAMETER.search(urllib.parse.unquote_plus(pair.partition("=")[0]))
    ]
    return redact(f"{scheme}{sep}{location}" + (question + "&".join(kept) if kept else ""))


def json_dumps(value: Any) -> str:
    """JSON text for JSON columns: orjson, or the standard library for what orjson refuses."""
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        # orjson stops at 254 levels of nesting and 64-bit integers; valid bodies can
        # have more. The standard library is slower but takes them.
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def create_engine(database_url: str, *, pool_size: int = 5) -> AsyncEngine:
    """An AsyncEngine for the URL, tuned for this workload.

    Args:
        database_url: as users write it (see :func:`normalize_database_url`).
        pool_size: PostgreSQL connections kept open by this process.
    """
    url = normalize_database_url(database_url)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            directory = os.path.dirname(os.path.abspath(url.database))
            if not os.path.isdir(directory):
                raise DatabaseUnavailable(f"directory for the SQLite file does not exist: {directory}")
        engine = create_async_engine(
            url,
            json_serializer=json_dumps,
            json_deserializer=orjson.loads,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
        )
        _tune_sqlite(engine.sync_engine, sleep=lambda delay: await_(asyncio.sleep(delay)))
        return engine
    return create_async_engine(
        url,
        json_serializer=json_dumps,
        json_deserializer=orjson.loads,
        pool_size=pool_size,
        max_overflow=2,
        pool_pre_ping=True,
        connect_args={"timeout": 15, "server_settings": {"application_name": "archiver"}},
    )


def _tune_sqlite(engine: Engine, *, sleep: Callable[[float], object]) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the sqlite3 module so BEGIN IMMEDIATE is ours.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        _enter_wal(cursor, engine.dialect.loaded_dbapi.OperationalError, sleep)
        # NORMAL in WAL mode survives process crashes; a power cut may lose the last commits,
        # which only means those IDs are fetched again after their lease expires.
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if not conn.get_execution_options().get(_EACH_STATEMENT_COMMITS):
            conn.exec_driver_sql("BEGIN IMMEDIATE")


def sqlite_write_engine(engine: AsyncEngine) -> Engine | None:
    """A synchronous engine on the same SQLite file as ``engine``, for the batch writer.

    Through aiosqlite every statement is a round trip between the event loop and
    aiosqlite's thread, and a batch transaction of ~19 statements held the file's write
    lock across all of them. With this engine the whole transaction runs in one call on
    a thread of its own (see :class:`archiver.store.ArchiveStore`). Same tuning as
    :func:`create_engine`. None for PostgreSQL and for an in-memory database (a second
    engine would open a different one). The caller disposes of it.
    """
    url = engine.url
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    write_engine = create_sync_engine(
        url.set(drivername="sqlite+pysqlite"),
        json_serializer=json_dumps,
        json_deserializer=orjson.loads,
        # Used from one writer thread, but disposed from the event loop's.
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
        pool_size=1,
    )
    _tune_sqlite(write_engine, sleep=time.sleep)
    return write_engine


def _enter_wal(cursor: Any, operational_error: type[Exception], sleep: Callable[[float], object]) -> None:
    """Put the file in WAL mode, waiting while another connection holds it.

    The switch from a rollback journal needs the file to itself, and SQLite answers
    "database is locked" at once instead of calling the busy handler. That happens when
    several processes open a new file at the same moment; once one has switched, the
    mode is stored in the file and the others find it set. On an AsyncEngine the wait is
    an asyncio sleep (this runs inside SQLAlchemy's greenlet), so the connection holding
    the file, which may belong to this same event loop, can finish.
    """
    delay, waited = 0.005, 0.0
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except operational_error as exc:
            if "locked" not in str(exc) or waited >= SQLITE_BUSY_TIMEOUT_MS / 1000:
                raise
        sleep(delay)
        waited += delay
        delay = min(delay * 2, 0.25)


_EACH_STATEMENT_COMMITS = "archiver_each_statement_commits"


@asynccontextmanager
async def statement_at_a_time(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection for work where every statement stands alone: each commits by itself.

    On SQLite there is then no ``BEGIN IMMEDIATE``, so the file's write lock is held only
    while SQLite runs a statement, not across the event-loop round trips between
    statements. A single ``UPDATE`` takes the write lock when it starts, before it reads,
    so it waits in the busy handler like ``BEGIN IMMEDIATE`` does and cannot deadlock.
    On PostgreSQL the connection is in autocommit mode, so a failing read (a table that
    does not exist yet) leaves no aborted transaction behind.
    """
    # SQLite gets its own option, not AUTOCOMMIT: SQLAlchemy would reset the driver's
    # isolation_level when the connection goes back to the pool, and the sqlite3 module
    # would then begin transactions itself (see _tune_sqlite).
    options = {"isolation_level": "AUTOCOMMIT"} if is_postgres(engine) else {_EACH_STATEMENT_COMMITS: True}
    async with engine.connect() as conn:
        yield await conn.execution_options(**options)


def is_postgres(engine: AsyncEngine | AsyncConnection) -> bool:
    """True for a PostgreSQL engine or connection."""
    return engine.dialect.name == "postgresql"


def now_sql(dialect_name: str) -> str:
    """SQL text of the database clock as unix seconds, for hand-written statements."""
    if dialect_name == "postgresql":
        return "extract(epoch from clock_timestamp())::float8"
    return "((julianday('now') - 2440587.5) * 86400.0)"


def is_transient_db_error(exc: BaseException) -> bool:
    """True when retrying the transaction may succeed (lost connection, lock, restart)."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, OperationalError):
        return True
    if isinstance(exc, DBAPIError):
        orig = exc.orig
        code = getattr(orig, "sqlstate", None) or getattr(getattr(orig, "__cause__", None), "sqlstate", None)
        # serialization failure, deadlock, admin shutdown, cannot connect now, connection failures
        if code in {
            "40001",
            "40P01",
            "57P01",
            "57P02",
            "57P03",
            "08000",
            "08003",
            "08006",
            "08001",
        }:
            return True
        text_ = str(orig).lower()
        return any(s in text_ for s in ("connection", "database is locked", "terminating"))
    return isinstance(exc, (ConnectionError, OSError, asyncio.TimeoutError))


def log_db_retry(exc: BaseException, delay: float) -> None:
    """The ``on_retry`` of :func:`with_db_retry` for the pipeline: one warning per retry."""
    get_logger().warning("archiver.db_retry", error=redact(first_line(exc)), wait_s=delay)


async def with_db_retry(
    func: Callable[[], Awaitable[T]],
    *,
    attempts: int = 8,
    first_delay: float = 0.2,
    max_delay: float = 10.0,
    on_retry: Callable[[BaseException, float], None] | None = None,
) -> T:
    """Run ``await func()`` and retry it with backoff while the database error is transient."""
    delay = first_delay
    for attempt in range(1, attempts + 1):
        try:
            return await func()
        except Exception as exc:
            if attempt == attempts or not is_transient_db_error(exc):
                raise
            if on_retry is not None:
                on_retry(exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay)
    raise AssertionError("unreachable")


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


SCHEMA_HEAD = "0006"
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
    if await _stamped_revision(engine) == SCHEMA_HEAD:
        return
    async with engine.connect() as conn:
        current = await conn.run_sync(_current_revision)
    head = head_revision()
    if current == head:
        return
    if current is not None and not _known_revision(current):
        raise SchemaError(
            f"the database schema ({current}) is newer than this archiver knows; upgrade archiver"
        )
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade)


def _known_revision(revision: str) -> bool:
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


@asynccontextmanager
async def open_database(
    database_url: str, *, pool_size: int = 5, upgrade: bool = True
) -> AsyncIterator[AsyncEngine]:
    """Open the database, check it answers, bring its schema to head, and dispose at the end.

    Raises:
        DatabaseUnavailable: it cannot be reached (the message names it, without password).
    """
    engine = create_engine(database_url, pool_size=pool_size)
    try:
        try:
            if upgrade:
                await with_db_retry(lambda: migrate(engine), attempts=3)
            else:
                async with engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
        except (TimeoutError, OSError, DBAPIError) as exc:
            raise DatabaseUnavailable(
                f"cannot use the database {redact_url(normalize_database_url(database_url))}: "
                f"{_short_db_error(exc)}"
            ) from None
        yield engine
    finally:
        await engine.dispose()


def _short_db_error(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    message = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    return redact(message[:300])
