"""Transient database errors, and retrying a transaction while they last.

A lost connection, a lock, a server restart: retrying the transaction may get past them.
What retrying cannot fix (:func:`archiver.db_faults.permanent_db_fault`) is never retried.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Final, TypeVar

from sqlalchemy.exc import DBAPIError, OperationalError

from archiver.db_faults import permanent_db_fault, sqlstate
from archiver.deadline import StopDeadline
from archiver.errors import first_line
from archiver.logs import get_logger
from archiver.redaction import redact

T = TypeVar("T")


_TRANSIENT_SQLSTATES = frozenset(
    {
        "40001",  # serialization failure
        "40P01",  # deadlock
        "57P01",  # admin shutdown (a restart, pg_terminate_backend)
        "57P02",  # crash shutdown
        "57P03",  # cannot connect now (starting up, shutting down)
        "08000",  # connection exceptions
        "08003",
        "08006",
        "08001",
        # A statement the server cancelled (a DBA's statement_timeout, pg_cancel_backend) or
        # a lock it gave up waiting for (lock_timeout): it waited on another session's lock,
        # which says nothing about the rows being written. Retried, never a poison body.
        "57014",
        "55P03",
        # Every connection slot taken ("sorry, too many clients already"): a fleet
        # reconnecting at once after a restart. Retried like the restart itself.
        "53300",
    }
)
"""PostgreSQL conditions (SQLSTATE) that retrying the transaction may get past."""

_TRANSIENT_TEXTS: Final = (
    "connection",
    "database is locked",
    "terminating",
    # asyncpg on a connection whose operation a restart cut off ("cannot switch to state
    # 15; another operation (2) is in progress"): that connection is dead, a new one works
    # (renormalize beside a restart ended with it in 1 of 6 runs).
    "another operation is in progress",
    "another operation (",
)


def is_transient_db_error(exc: BaseException) -> bool:
    """True when retrying the transaction may succeed (lost connection, lock, restart)."""
    if permanent_db_fault(exc) is not None:
        return False
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, OperationalError):
        return True
    if isinstance(exc, DBAPIError):
        if sqlstate(exc) in _TRANSIENT_SQLSTATES:
            return True
        text_ = str(exc.orig).lower()
        return any(s in text_ for s in _TRANSIENT_TEXTS)
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
    deadline: StopDeadline | None = None,
) -> T:
    """Run ``await func()`` and retry it with backoff while the database error is transient.

    ``deadline``: once a stop is requested, no attempt and no backoff sleep outlasts its
    deadline (see :mod:`archiver.deadline`); raises ``StopDeadlinePassed`` then.
    """
    if deadline is not None:
        return await deadline.run(
            partial(
                with_db_retry,
                func,
                attempts=attempts,
                first_delay=first_delay,
                max_delay=max_delay,
                on_retry=on_retry,
            )
        )
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
