"""Transactions that are not the default one: a read-only snapshot, and a statement at a time.

The default transaction on SQLite starts with ``BEGIN IMMEDIATE`` (the ``begin`` hook of
:mod:`archiver.sqlite_engine`); the execution options named here make that hook begin
otherwise.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

EACH_STATEMENT_COMMITS = "archiver_each_statement_commits"
"""Execution option: no transaction is begun on SQLite, each statement commits by itself."""
READ_SNAPSHOT = "archiver_read_snapshot"
"""Execution option: the SQLite transaction begins deferred (a WAL reader's)."""


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
            conn = await conn.execution_options(**{READ_SNAPSHOT: True})
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
    # would then begin transactions itself (see :mod:`archiver.sqlite_engine`).
    options = {"isolation_level": "AUTOCOMMIT"} if is_postgres(engine) else {EACH_STATEMENT_COMMITS: True}
    async with engine.connect() as conn:
        yield await conn.execution_options(**options)


def is_postgres(engine: AsyncEngine | AsyncConnection) -> bool:
    """True for a PostgreSQL engine or connection."""
    return engine.dialect.name == "postgresql"
