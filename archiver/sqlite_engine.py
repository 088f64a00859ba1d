"""SQLite engines: the pragmas and transaction hooks every connection gets.

SQLite runs in WAL mode with a busy timeout, and every transaction starts with
``BEGIN IMMEDIATE``: the write lock is taken up front, so two processes never deadlock
on a lock upgrade (the case that makes SQLite answer "database is locked" at once).
"""

from __future__ import annotations

import asyncio
import os
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.util import await_

from archiver.dburl import sqlite_path
from archiver.errors import DatabaseUnavailable, DatabaseVanished
from archiver.jsontext import json_text
from archiver.jsontext import loads_stored as loads_json
from archiver.sqlite_file import check_same_file, directory_problem, vanished_message, watch_file
from archiver.transactions import EACH_STATEMENT_COMMITS, READ_SNAPSHOT

SQLITE_BUSY_TIMEOUT_MS = 60_000


def create_sqlite_engine(url: URL, *, must_exist: bool = False) -> AsyncEngine:
    """The AsyncEngine of :func:`archiver.db.create_engine` for a normalized SQLite URL.

    Raises:
        DatabaseUnavailable: no SQLite file can be at the URL's path (a directory there,
            or no directory to hold it).
    """
    path = sqlite_path(url)
    if path is not None:
        problem = directory_problem(path)
        if problem:
            raise DatabaseUnavailable(problem)
    engine = create_async_engine(
        url,
        json_serializer=json_text,
        json_deserializer=loads_json,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
    )
    tune_sqlite(engine.sync_engine, sleep=lambda delay: await_(asyncio.sleep(delay)), must_exist=must_exist)
    return engine


def tune_sqlite(
    engine: Engine,
    *,
    sleep: Callable[[float], object],
    same_file_as: Engine | None = None,
    must_exist: bool = False,
) -> None:
    """Install the hooks that open, tune and watch every connection of ``engine``, and begin
    and commit its transactions.

    Args:
        engine: a SQLite engine (the sync engine of an AsyncEngine, or a write engine).
        sleep: how to wait while another connection switches the file to WAL mode.
        same_file_as: the engine whose file this one opens too (see :func:`sqlite_write_engine`).
        must_exist: no connection may create the file, not even the first.
    """
    path = sqlite_path(engine.url)
    # The file the engine's first connection opened; shared with the write engine made
    # from it (sqlite_write_engine), whose first connection comes later.
    watch = watch_file(engine, same_file_as=same_file_as)

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
            raise DatabaseVanished(vanished_message(path, deleted=True))
        # A file that exists is opened without the right to create it: if it is deleted
        # now, this connection fails instead of making an empty one (a second engine on
        # it, such as the writer process's, has not connected yet).
        cargs[:1] = [f"file:{urllib.parse.quote(path)}?mode=rw"]
        cparams["uri"] = True

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, record: Any) -> None:
        if path is not None:
            watch.note_opened(path, dbapi_connection, record.info)
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
        if options.get(READ_SNAPSHOT):
            conn.exec_driver_sql("BEGIN")  # deferred: a WAL reader never takes the write lock
        elif not options.get(EACH_STATEMENT_COMMITS):
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    @event.listens_for(engine, "commit")
    def _on_commit(conn: Connection) -> None:
        # Every transaction, of every command, checks before its COMMIT that the file is
        # still the archive: no write path can forget it. (Raising here skips the COMMIT;
        # the transaction's context manager rolls back.)
        if not conn.get_execution_options().get(EACH_STATEMENT_COMMITS):
            check_same_file(conn)


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


def sqlite_write_engine(engine: AsyncEngine) -> Engine | None:
    """A synchronous engine on the same SQLite file as ``engine``, for the batch writer.

    Through aiosqlite every statement is a round trip between the event loop and
    aiosqlite's thread, and a batch transaction of ~19 statements held the file's write
    lock across all of them. With this engine the whole transaction runs in one call on
    a thread of its own (see :class:`archiver.store.ArchiveStore`). Same tuning as
    :func:`archiver.db.create_engine`. None for PostgreSQL and for an in-memory database (a second
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
    tune_sqlite(write_engine, sleep=time.sleep, same_file_as=engine.sync_engine)
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
