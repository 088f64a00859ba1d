"""Health checks behind ``archiver check``: for supervisors, timers and humans.

The checks only read: they never migrate, never create a SQLite file, never touch a
queue row. Each problem is one human-readable line; no problems means healthy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from archiver.db import create_engine, now_sql
from archiver.db_faults import short_db_error
from archiver.dburl import describe_database, normalize_database_url
from archiver.errors import DatabaseUnavailable, NotAnArchive
from archiver.migrate import head_revision, known_revision, schema_revision
from archiver.queue import QueueStore, unserved_line, unserved_sources
from archiver.redaction import MIN_SECRET_CHARS, database_passwords, redact
from archiver.sqlite_file import prepare_sqlite_file
from archiver.transactions import statement_at_a_time
from archiver.workers import worker_problems

EXPIRED_LEASE_SLACK_S = 60.0
"""A lease expired this long ago with nobody recovering it means no live worker.

Every claim recovers expired leases first, and an idle daemon claims every few seconds,
so a live worker clears them within seconds of expiry."""


@dataclass(frozen=True)
class CheckResult:
    """The outcome of :func:`run_checks`: ``ok`` when ``problems`` is empty."""

    ok: bool
    problems: list[str]


async def run_checks(
    database_url: str,
    *,
    max_pending_age_s: float = 3600.0,
    max_expired_leases: int = 0,
    served_sources: Sequence[str] | None = None,
) -> CheckResult:
    """Check that the database answers, its schema is current, the queue moves, and no live
    worker reports its endpoint paused or its key refused (:mod:`archiver.workers`).

    Args:
        database_url: as users write it; passwords never appear in the problems.
        max_pending_age_s: a ``pending`` row due for longer than this (nobody took it)
            means the queue is stalled.
        max_expired_leases: how many ``in_flight`` rows whose lease expired more than
            60 s ago are tolerated (more means no live worker is recovering them).
        served_sources: the sources the config serves; rows waiting for another source
            are a problem (None: not checked).

    Raises:
        ConfigError: ``database_url`` is not a supported database URL.
    """
    url = normalize_database_url(database_url)
    shown = describe_database(url)
    try:
        # Connecting to a missing file would create an empty one: report it missing instead.
        prepare_sqlite_file(url, create=False)
        engine = create_engine(database_url, pool_size=1)
    except DatabaseUnavailable as exc:
        return _result([f"database unreachable: {exc}"])
    except NotAnArchive as exc:
        return _result([str(exc)])
    try:
        revision = await schema_revision(engine)
        head = head_revision()
        if revision != head:
            return _result([_schema_problem(revision, head)])
        problems = await _queue_problems(engine, max_pending_age_s, max_expired_leases)
        problems += await _source_problems(engine, served_sources)
        return _result(problems + await worker_problems(engine))
    except (TimeoutError, OSError, DBAPIError) as exc:
        return _result([f"database unreachable: {shown}: {_scrub(short_db_error(exc), database_url)}"])
    finally:
        await engine.dispose()


def _result(problems: list[str]) -> CheckResult:
    return CheckResult(ok=not problems, problems=[redact(problem) for problem in problems])


def _schema_problem(revision: str | None, head: str | None) -> str:
    if revision is None:
        return "schema missing: the database has no archiver schema (run `archiver migrate`)"
    if not known_revision(revision):
        return (
            f"schema newer than this archiver: database at {revision}, "
            f"archiver knows up to {head} (upgrade archiver)"
        )
    return f"schema out of date: database at {revision}, current is {head} (run `archiver migrate`)"


async def _queue_problems(
    engine: AsyncEngine, max_pending_age_s: float, max_expired_leases: int
) -> list[str]:
    now = now_sql(engine.dialect.name)
    async with statement_at_a_time(engine) as conn:  # reads: no SQLite write lock
        stale_count, stale_oldest = (
            await conn.execute(
                text(
                    f"SELECT count(*), max({now} - next_attempt_at) FROM archive_queue "
                    f"WHERE state = 'pending' AND next_attempt_at < {now} - :age"
                ),
                {"age": max_pending_age_s},
            )
        ).one()
        expired_count, expired_oldest = (
            await conn.execute(
                text(
                    f"SELECT count(*), max({now} - lease_expires_at) FROM archive_queue "
                    f"WHERE state = 'in_flight' AND lease_expires_at < {now} - :slack"
                ),
                {"slack": EXPIRED_LEASE_SLACK_S},
            )
        ).one()
    problems = []
    if stale_count:
        problems.append(
            f"queue stalled: {stale_count} pending rows due for more than "
            f"{format_duration(max_pending_age_s)} (oldest {format_duration(float(stale_oldest))}); "
            "is a worker running?"
        )
    if expired_count > max_expired_leases:
        problems.append(
            f"leases piling up: {expired_count} in_flight rows whose lease expired more than "
            f"{format_duration(EXPIRED_LEASE_SLACK_S)} ago "
            f"(oldest {format_duration(float(expired_oldest))}); no live worker is recovering them"
        )
    return problems


async def _source_problems(engine: AsyncEngine, served: Sequence[str] | None) -> list[str]:
    if served is None:
        return []
    waiting = unserved_sources(await QueueStore(engine).waiting_by_source(), served)
    return [unserved_line(name, count) for name, count in waiting.items()]


def format_duration(seconds: float) -> str:
    """``45s``, ``1.5min``, ``3.2h``, ``2d``: short, for problem lines."""
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= size:
            return f"{seconds / size:.1f}".removesuffix(".0") + unit
    return f"{max(seconds, 0):.0f}s"


def _scrub(message: str, database_url: str) -> str:
    # Driver messages should not carry the password; make sure of it, also when the caller
    # (a library user, not the CLI) never registered it.
    for password in sorted(database_passwords(database_url), key=len, reverse=True):
        if len(password) >= MIN_SECRET_CHARS:
            message = message.replace(password, "***")
    return redact(message)
