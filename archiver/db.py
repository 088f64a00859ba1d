"""Database engines: SQLite tuning, the database clock, and migrations (URLs are
:mod:`archiver.dburl`; errors :mod:`archiver.db_faults` and :mod:`archiver.db_retry`).

SQLite runs in WAL mode with a busy timeout, and every transaction starts with
``BEGIN IMMEDIATE``: the write lock is taken up front, so two processes never deadlock
on a lock upgrade (the case that makes SQLite answer "database is locked" at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import os
import sys
import time
import urllib.parse
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy import event, text
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.util import await_

from archiver.db_faults import database_error
from archiver.db_retry import is_transient_db_error, with_db_retry
from archiver.dburl import describe_database, normalize_database_url, sqlite_path
from archiver.deadline import StopDeadline, StopDeadlinePassed
from archiver.errors import (
    DatabaseUnavailable,
    DatabaseVanished,
    NotAnArchive,
    SchemaError,
)
from archiver.jsontext import json_text, jsonb_text
from archiver.jsontext import loads_stored as loads_json
from archiver.pgurl import split_postgresql_url
from archiver.redaction import redact

SQLITE_BUSY_TIMEOUT_MS = 60_000
_MIGRATION_LOCK_ID = 0x61726368  # "arch": PostgreSQL advisory lock key for migrations


def create_engine(
    database_url: str,
    *,
    pool_size: int = 5,
    must_exist: bool = False,
    idle_in_transaction_s: float | None = None,
) -> AsyncEngine:
    """An AsyncEngine for the URL, tuned for this workload.

    Args:
        database_url: as users write it (see :func:`normalize_database_url`).
        pool_size: PostgreSQL connections kept open by this process.
        must_exist: no connection may create the SQLite file, not even the first (the
            caller made sure it exists: a file missing now was deleted).
        idle_in_transaction_s: PostgreSQL: the server ends a session of this engine that
            waits this long inside a transaction (``idle_in_transaction_session_timeout``,
            unless the URL's ``options`` set it or the server's setting is stricter): a
            process stopped or cut off mid-write then lets go of the locks every other
            writer of the fleet needs.
    """
    url = normalize_database_url(database_url)
    if url.get_backend_name() == "sqlite":
        path = sqlite_path(url)
        if path is not None:
            problem = _directory_problem(path)
            if problem:
                raise DatabaseUnavailable(problem)
        engine = create_async_engine(
            url,
            json_serializer=json_text,
            json_deserializer=loads_json,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
        )
        _tune_sqlite(
            engine.sync_engine, sleep=lambda delay: await_(asyncio.sleep(delay)), must_exist=must_exist
        )
        return engine
    url, connect_args = split_postgresql_url(url)
    engine = create_async_engine(
        url,
        json_serializer=jsonb_text,
        json_deserializer=loads_json,
        pool_size=pool_size,
        max_overflow=2,
        pool_pre_ping=True,
        connect_args=connect_args,
    )
    if idle_in_transaction_s is not None and _IDLE_SETTING not in connect_args["server_settings"]:
        _bound_idle_in_transaction(engine.sync_engine, max(int(idle_in_transaction_s * 1000), 1))
    return engine


_IDLE_SETTING = "idle_in_transaction_session_timeout"
_BOUND_IDLE_SQL = (
    f"SELECT set_config('{_IDLE_SETTING}', $1, false) FROM pg_settings "
    f"WHERE name = '{_IDLE_SETTING}' AND (setting::bigint = 0 OR setting::bigint > $2)"
)


def _bound_idle_in_transaction(engine: Engine, limit_ms: int) -> None:
    """Each new connection ends a transaction left idle longer than ``limit_ms``, unless the
    server's own setting (a DBA's, for the database or the role) is already stricter."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(_BOUND_IDLE_SQL, (str(limit_ms), limit_ms))
        finally:
            cursor.close()
        dbapi_connection.commit()  # a session setting made in a transaction rolled back is undone


def _tune_sqlite(
    engine: Engine,
    *,
    sleep: Callable[[float], object],
    same_file_as: Engine | None = None,
    must_exist: bool = False,
) -> None:
    path = sqlite_path(engine.url)
    # The file the engine's first connection opened; shared with the write engine made
    # from it (sqlite_write_engine), whose first connection comes later.
    watch = _WATCHES.setdefault(same_file_as or engine, _FileWatch())
    _WATCHES[engine] = watch

    @event.listens_for(engine, "do_connect")
    def _on_do_connect(_dialect: Any, _record: Any, cargs: list[Any], cparams: dict[str, Any]) -> None:
        if path is not None and os.path.exists(path) and _read_only_place(path):
            # On read-only media (a backup on a read-only mount) the file can still be read.
            cargs[:1] = [_read_only_uri(path)]
            cparams["uri"] = True
            return
        if path is None:
            return
        if not os.path.exists(path):
            if watch.identity is None and not must_exist:
                return  # a new archive (open_database makes the file before it connects)
            # Later connections (the pool opens more as it needs them) must never create it:
            # a file deleted during the run would come back empty and the run write into it.
            raise DatabaseVanished(_vanished_message(path, deleted=True))
        # A file that exists is opened without the right to create it: if it is deleted
        # now, this connection fails instead of making an empty one (a second engine on
        # it, such as the writer process's, has not connected yet).
        cargs[:1] = [f"file:{urllib.parse.quote(path)}?mode=rw"]
        cparams["uri"] = True

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, record: Any) -> None:
        if path is not None:
            # The file this connection opened (stat right after the open). Every write
            # batch compares it with what the path names now (check_same_file), and a
            # later connection must open the same file as the first one did.
            identity = _file_identity(path)
            if identity is not None:
                if watch.identity is not None and identity != watch.identity:
                    dbapi_connection.close()
                    raise DatabaseVanished(_vanished_message(path, deleted=False))
                watch.identity = identity
                record.info[_FILE_IDENTITY] = (path, identity)
        # Take transaction control away from the sqlite3 module so BEGIN IMMEDIATE is ours.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        if path is None or not _read_only_place(path):  # a read-only file keeps its journal mode
            # A new archive (no tables yet) gets incremental auto-vacuum, so `archiver compact`
            # can give freed pages back online. Never set on an existing file: the pragma may
            # write the header, which a read-only command must not do (a full disk).
            cursor.execute("SELECT count(*) FROM sqlite_master")
            if cursor.fetchone()[0] == 0:
                cursor.execute("PRAGMA auto_vacuum = INCREMENTAL")
            _enter_wal(cursor, engine.dialect.loaded_dbapi.OperationalError, sleep)
        # NORMAL in WAL mode survives process crashes; a power cut may lose the last commits,
        # which only means those IDs are fetched again after their lease expires.
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()
        if path is not None:
            watch.note_side_files(path)

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        options = conn.get_execution_options()
        if options.get(_READ_SNAPSHOT):
            conn.exec_driver_sql("BEGIN")  # deferred: a WAL reader never takes the write lock
        elif not options.get(_EACH_STATEMENT_COMMITS):
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    @event.listens_for(engine, "commit")
    def _on_commit(conn: Connection) -> None:
        # Every transaction, of every command, checks before its COMMIT that the file is
        # still the archive: no write path can forget it. (Raising here skips the COMMIT;
        # the transaction's context manager rolls back.)
        if not conn.get_execution_options().get(_EACH_STATEMENT_COMMITS):
            check_same_file(conn)


_FILE_IDENTITY = "archiver_file_identity"


def _read_only_place(path: str) -> bool:
    """True when the SQLite file, or the directory that must hold its ``-wal``/``-shm``,
    cannot be written (a read-only mount; also for root, whom file modes do not stop)."""
    return not os.access(path, os.W_OK) or not os.access(os.path.dirname(path), os.W_OK)


def _read_only_uri(path: str) -> str:
    """How to open a SQLite file that cannot be written: read-only.

    A WAL database is read through its ``-shm`` when one is there (another process may
    be writing through another mount). Without one, nothing is writing it (a writer keeps
    the ``-shm`` open) and none can be made, so the file is opened ``immutable``: no
    locks, no ``-shm``; an archive closed cleanly has everything in the file itself.
    Writes then fail as "attempt to write a readonly database": one line, as documented.
    """
    uri = f"file:{urllib.parse.quote(path)}?mode=ro"
    if not os.path.exists(path + "-shm"):
        uri += "&immutable=1"
    return uri


class _FileWatch:
    """What an engine's connections opened: the SQLite file, and its ``-wal``/``-shm`` files."""

    def __init__(self) -> None:
        self.identity: tuple[int, int] | None = None
        self.side_files: set[tuple[int, int]] = set()

    def note_side_files(self, path: str) -> None:
        for suffix in _SIDE_FILES:
            identity = _file_identity(path + suffix)
            if identity is not None:
                self.side_files.add(identity)


_WATCHES: weakref.WeakKeyDictionary[Engine, _FileWatch] = weakref.WeakKeyDictionary()
_SIDE_FILES = ("-wal", "-shm")


def forget_side_files(engine: AsyncEngine) -> None:
    """After ``engine`` is disposed: if its SQLite file was deleted or replaced meanwhile, remove
    the ``-wal`` and ``-shm`` files its connections left at the path.

    They belong to the old file, and SQLite would replay that WAL into whatever file is at
    the path now (a database renamed over the archive reads as corrupt), or into a new
    archive created there.
    """
    path = sqlite_path(engine.url)
    watch = _WATCHES.get(engine.sync_engine)
    if path is None or watch is None or watch.identity is None:
        return
    current = _file_identity(path)
    if current == watch.identity:
        return
    for suffix in _SIDE_FILES:
        # With no file at the path, side files there can only be the old file's, also the
        # ones another of its connections (the writer process) opened after we looked.
        if current is None or _file_identity(path + suffix) in watch.side_files:
            with contextlib.suppress(OSError):
                os.unlink(path + suffix)


def _file_identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _vanished_message(path: str, *, deleted: bool) -> str:
    how = "deleted" if deleted else "replaced by another file"
    return (
        f"the archive file {path} was {how} while archiver was using it: stopped before the "
        "next write (what this run wrote earlier went with the old file)"
    )


def check_same_file(conn: Connection) -> None:
    """Raise :class:`DatabaseVanished` when the SQLite file of ``conn`` is no longer at its path.

    Called before every COMMIT on a SQLite engine (the ``commit`` hook of
    :func:`_tune_sqlite`), and by the batch writer before it returns: a file deleted (or renamed
    over) during a run still takes writes through the open descriptor, into an inode
    nobody can read any more, and the run would report them archived.
    """
    if conn.dialect.name != "sqlite":
        return
    recorded = conn.connection.info.get(_FILE_IDENTITY)
    if recorded is None:
        return
    path, identity = recorded
    now = _file_identity(path)
    if now != identity:
        raise DatabaseVanished(_vanished_message(path, deleted=now is None))


def _directory_problem(path: str) -> str | None:
    """Why a SQLite file cannot be at ``path`` whatever its contents (None: it can)."""
    directory = os.path.dirname(path)
    if os.path.isdir(path):
        return f"{path} is a directory, not a SQLite file"
    if not os.path.exists(directory):
        return f"directory for the SQLite file does not exist: {directory}"
    if not os.path.isdir(directory):
        return f"{directory} is not a directory (in the SQLite path {path})"
    return None


def prepare_sqlite_file(url: URL, *, create: bool) -> str | None:
    """Make sure the SQLite file of ``url`` exists before anything connects to it.

    Connecting to a missing file creates an empty one, so a command that only reads
    would leave an empty archive behind and report zeros.

    Args:
        url: a normalized URL (PostgreSQL and in-memory databases pass unchecked).
        create: create a missing file (``enqueue``, ``run``, ``migrate``, ``demo``).

    Returns:
        The path when this call created the file, else None.

    Raises:
        DatabaseUnavailable: the file is missing and ``create`` is false, or it cannot be
            created; one line naming the path.
        NotAnArchive: the file holds another application's tables.
    """
    path = sqlite_path(url)
    if path is None:
        return None
    problem = _directory_problem(path)
    if problem:
        raise DatabaseUnavailable(problem)
    if os.path.exists(path):
        refuse_a_foreign_sqlite_file(path)
        return None
    if not create:
        raise DatabaseUnavailable(
            f"no archive at {path}: the file does not exist (check the path; "
            "`archiver migrate` or `archiver enqueue` creates a new archive)"
        )
    # What a deleted archive left beside it: SQLite would replay an old WAL into the new
    # file. (Removed first: once the file exists, another process may make its own.)
    for suffix in ("-wal", "-shm", "-journal"):
        with contextlib.suppress(OSError):
            os.unlink(path + suffix)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return None  # another process made it a moment ago
    except OSError as exc:
        raise DatabaseUnavailable(f"cannot create the archive at {path}: {exc.strerror or exc}") from None
    os.close(fd)
    return path


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
        json_serializer=json_text,
        json_deserializer=loads_json,
        # Used from one writer thread, but disposed from the event loop's.
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
        pool_size=1,
    )
    _tune_sqlite(write_engine, sleep=time.sleep, same_file_as=engine.sync_engine)
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
_READ_SNAPSHOT = "archiver_read_snapshot"


@asynccontextmanager
async def read_snapshot(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A transaction that only reads, all its statements seeing one snapshot.

    On SQLite it begins deferred (``BEGIN``, not ``BEGIN IMMEDIATE``): in WAL mode a reader
    never takes the write lock, so a long read (an export chunk) never stops the daemon's
    writer or a push. On PostgreSQL it is ``REPEATABLE READ``, read only. A write in it
    fails (SQLite: once it needs the lock another connection holds; do not write here).
    """
    async with engine.connect() as conn:
        if is_postgres(conn):
            conn = await conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        else:
            conn = await conn.execution_options(**{_READ_SNAPSHOT: True})
        async with conn.begin():
            yield conn


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
    """SQL text of the database clock as unix seconds, for hand-written statements.

    On PostgreSQL a scalar subquery: the statement reads the clock once (an InitPlan),
    and a comparison with it bounds an index scan (``next_attempt_at <= now`` reads only
    the due rows). ``clock_timestamp()`` itself is volatile, so the planner filtered every
    row of the index with it: each claim with nothing due read every waiting row.
    SQLite's ``julianday('now')`` is fixed for the statement and bounds the index already.
    """
    if dialect_name == "postgresql":
        return "(SELECT extract(epoch from clock_timestamp())::float8)"
    return "((julianday('now') - 2440587.5) * 86400.0)"


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

        await _refuse_a_foreign_database(engine)
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
    if current is None or not _known_revision(current):
        await _refuse_a_foreign_database(engine)
    if current is not None and not _known_revision(current):
        raise SchemaError(
            f"the database schema ({current}) is newer than this archiver knows; upgrade archiver"
        )
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade)


_MAX_NAMED_TABLES = 5


async def _refuse_a_foreign_database(engine: AsyncEngine) -> None:
    """Raise :class:`NotAnArchive` when the database has tables but not archiver's.

    Checked before the first migration: archiver never scatters its tables among another
    application's (a mistyped path to some other SQLite file, the wrong PostgreSQL
    database). On PostgreSQL only the schema archiver would write into counts
    (``current_schema()``): other schemas of the same database are other applications'
    business.
    """
    if is_postgres(engine):
        query = (
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = current_schema() ORDER BY table_name"
        )
    else:
        query = _SQLITE_TABLES
    async with statement_at_a_time(engine) as conn:
        tables = [str(row[0]) for row in await conn.execute(text(query))]
    _refuse_foreign_tables(describe_database(engine.url), tables)


_SQLITE_TABLES = (
    "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite%' ORDER BY name"
)


_OWN_TABLES = frozenset({"archive_queue", "archive_changes", "archive_dictionaries"})
"""Tables only an archiver archive has: any one of them makes a database ours (a damaged
archive missing one is still an archive, for its own error to say what is wrong)."""


def _refuse_foreign_tables(where: str, tables: list[str]) -> None:
    if not tables or _OWN_TABLES.intersection(tables):
        return
    named = ", ".join(redact(t) for t in tables[:_MAX_NAMED_TABLES])
    more = len(tables) - _MAX_NAMED_TABLES
    if more > 0:
        named += f" and {more} more"
    raise NotAnArchive(
        f"{where} is not an archiver archive (it has tables of its own: {named}); "
        "point --database-url at the archive"
    )


def refuse_a_foreign_sqlite_file(path: str) -> None:
    """Raise :class:`NotAnArchive` when the SQLite file at ``path`` is another application's.

    Read through a read-only connection before archiver's own engine opens the file: that
    one would switch the file to WAL mode, a change to someone else's database. A file
    that cannot be read this way is left to the engine, which reports it.
    """
    import sqlite3

    try:
        conn = sqlite3.connect(f"file:{urllib.parse.quote(path)}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return
    try:
        tables = [str(row[0]) for row in conn.execute(_SQLITE_TABLES)]
    except sqlite3.Error:
        return
    finally:
        conn.close()
    _refuse_foreign_tables(path, tables)


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
    database_url: str,
    *,
    pool_size: int = 5,
    upgrade: bool = True,
    create: bool = True,
    deadline: StopDeadline | None = None,
    idle_in_transaction_s: float | None = None,
) -> AsyncIterator[AsyncEngine]:
    """Open the database, check it answers, bring its schema to head, and dispose at the end.

    Args:
        database_url: as users write it (see :func:`normalize_database_url`).
        pool_size: PostgreSQL connections kept open.
        upgrade: migrate the schema to head (else only check the database answers).
        create: create a missing SQLite file, saying so once on stderr. Commands that only
            read or rebuild pass False: a missing file, or a PostgreSQL database without
            tables, is then an error naming it.
        deadline: a stop's deadline (:mod:`archiver.deadline`): once it passed, the
            connections are dropped at the end instead of closed (closing one waits for
            the server's answer, which a server out of reach never sends).
        idle_in_transaction_s: see :func:`create_engine` (the commands that write beside
            a fleet pass ``--lease-seconds``).

    Raises:
        ConfigError: the URL is not one archiver can use.
        DatabaseUnavailable: it cannot be reached (the message names it, without password).
        DatabaseFault: it refuses the work for good (disk full, read-only), at open or in
            the body of the ``async with``; also database errors raised in the body become
            one-line ArchiverErrors, never a SQLAlchemy error carrying SQL parameters.
    """
    url = normalize_database_url(database_url)
    where = describe_database(url)
    created = prepare_sqlite_file(url, create=create)
    engine = create_engine(
        database_url, pool_size=pool_size, must_exist=True, idle_in_transaction_s=idle_in_transaction_s
    )
    try:
        try:
            if not create and is_postgres(engine):
                await _refuse_an_empty_postgres_database(engine, where)
            if upgrade:
                await with_db_retry(lambda: migrate(engine), attempts=3)
            else:
                async with engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
        except (TimeoutError, OSError, DBAPIError) as exc:
            raise database_error(exc, where) from None
        if created is not None:
            print(f"archiver: created a new archive at {created}", file=sys.stderr, flush=True)
        try:
            yield engine
        except DBAPIError as exc:
            raise database_error(exc, where) from None
    finally:
        await _dispose(engine, deadline)
        forget_side_files(engine)


async def _dispose(engine: AsyncEngine, deadline: StopDeadline | None) -> None:
    if deadline is None or not deadline.started:
        await engine.dispose()
        return
    try:
        await deadline.run(engine.dispose)
    except StopDeadlinePassed:
        await engine.dispose(close=False)


async def _refuse_an_empty_postgres_database(engine: AsyncEngine, where: str) -> None:
    """The PostgreSQL twin of a missing SQLite file, for commands that create nothing.

    An empty database is a mistyped name, or none at all (``postgresql://host/`` connects
    to the database named as the user, often the ``postgres`` maintenance database): a
    command that only reads or rebuilds would install the archive there and report zeros.

    Raises:
        DatabaseUnavailable: nothing in the schema archiver would write into.
    """
    async with engine.connect() as conn:
        tables = (
            await conn.execute(text("SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()"))
        ).scalar()
    if not tables:
        raise DatabaseUnavailable(
            f"no archive in {where}: the database has no tables (check the database name; "
            "`archiver migrate` or `archiver enqueue` creates a new archive)"
        )
