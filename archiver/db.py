"""Opening the database: the engine for a URL, its checks and schema, and the database clock.

What an engine is made of lives beside this module: URLs (:mod:`archiver.dburl`), SQLite
engines and files (:mod:`archiver.sqlite_engine`, :mod:`archiver.sqlite_file`),
PostgreSQL sessions (:mod:`archiver.pg_session`), transactions
(:mod:`archiver.transactions`), errors (:mod:`archiver.db_faults`, :mod:`archiver.db_retry`)
and migrations (:mod:`archiver.migrate`).
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from archiver.db_faults import database_error
from archiver.db_retry import with_db_retry
from archiver.dburl import describe_database, normalize_database_url
from archiver.deadline import StopDeadline, StopDeadlinePassed
from archiver.errors import DatabaseUnavailable
from archiver.jsontext import jsonb_text
from archiver.jsontext import loads_stored as loads_json
from archiver.migrate import migrate
from archiver.pg_session import IDLE_SETTING, bound_idle_in_transaction
from archiver.pgurl import split_postgresql_url
from archiver.sqlite_engine import create_sqlite_engine
from archiver.sqlite_file import forget_side_files, prepare_sqlite_file
from archiver.transactions import is_postgres


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
        return create_sqlite_engine(url, must_exist=must_exist)
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
    if idle_in_transaction_s is not None and IDLE_SETTING not in connect_args["server_settings"]:
        bound_idle_in_transaction(engine.sync_engine, max(int(idle_in_transaction_s * 1000), 1))
    return engine


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
