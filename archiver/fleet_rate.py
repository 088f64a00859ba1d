"""A source's ``max_rps`` for the whole fleet: every process sharing the database together.

The database keeps one schedule per source (``archive_rate_limits``): ``next_free_at``,
the database-clock time from which the next request may be sent (the "theoretical
arrival time" of GCRA, the generic cell rate algorithm). A process that needs to send
asks for a few send times at once in one atomic statement::

    start        = max(next_free_at, now)
    next_free_at = start + n / rate

and gets the times ``start, start + 1/rate, ...``: requests of the whole fleet are
spaced ``1/rate`` apart, so no one-second window holds more than ``rate`` (+1 at its
edge) of them, whatever the number of processes and hosts. (``rate`` is
:data:`SCHEDULE_SHARE` of ``max_rps``: the headroom absorbs requests that leave late.) The grant is one
``UPDATE ... RETURNING`` (PostgreSQL row lock; SQLite takes the file's write lock for
the statement), with ``now`` from the database clock, so hosts with skewed clocks agree.
Each process turns the database times into its own monotonic clock by the offset the
same statement returns, and sleeps until each time before sending.

A batch is at most :data:`GRANT_SECONDS` of the rate (and as many as wait, no more), so
a process holds few times it may not use; a time not used soon after it passes is dropped
(a gap, never a burst).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from functools import partial

from sqlalchemy import Column, Float, String, Table, text
from sqlalchemy.ext.asyncio import AsyncEngine

from archiver.db import now_sql
from archiver.db_retry import log_db_retry, with_db_retry
from archiver.schema import metadata
from archiver.transactions import statement_at_a_time

__all__ = ["GRANT_SECONDS", "FleetRate", "archive_rate_limits"]

GRANT_SECONDS = 0.25
"""Largest grant: this many seconds' worth of requests per database round trip."""
LATE_S = 0.1
"""A send time passed by more than this (or two intervals, if less) is dropped, not used
late: a late send bunches up with the ones on time after it, so a one-second window could
hold more than ``max_rps``. Two intervals late adds at most about two requests to a window."""
SCHEDULE_SHARE = 0.95
"""The schedule runs at this share of ``max_rps``: requests leave a little after their
send times (event loop, connection pool, a busy host), and this headroom keeps the ones
that bunch up that way under the ceiling the provider counts."""

archive_rate_limits = Table(
    "archive_rate_limits",
    metadata,
    Column("source", String(64), primary_key=True),
    Column("next_free_at", Float, nullable=False),
    comment="Fleet-wide request schedule per source with a max_rps; see archiver/fleet_rate.py",
)


class FleetRate:
    """At most ``max_rps`` requests per second for one source, across every process.

    Args:
        engine: the shared database.
        source: the source name (its row in ``archive_rate_limits``).
        max_rps: requests per second for the whole fleet.
    """

    def __init__(self, engine: AsyncEngine, source: str, max_rps: float) -> None:
        if max_rps <= 0:
            raise ValueError("max_rps must be positive")
        self.engine = engine
        self.source = source
        self.rate = max_rps
        self.interval = 1.0 / (max_rps * SCHEDULE_SHARE)
        self.late_s = min(LATE_S, 2 * self.interval)
        self.max_grant = max(1, int(max_rps * GRANT_SECONDS))
        self.grants = 0
        self.dropped = 0
        self._times: deque[float] = deque()  # local monotonic send times granted, in order
        self._lock = asyncio.Lock()
        self._waiting = 0
        self._row_ready = False
        now = now_sql(engine.dialect.name)
        self._grant_sql = text(
            f"UPDATE archive_rate_limits SET next_free_at = "
            f"(CASE WHEN next_free_at > {now} THEN next_free_at ELSE {now} END) + :span "
            f"WHERE source = :source RETURNING next_free_at, {now}"
        )
        self._insert_sql = text(
            "INSERT INTO archive_rate_limits (source, next_free_at) VALUES (:source, 0) "
            "ON CONFLICT (source) DO NOTHING"
        )

    async def acquire(self, stop: asyncio.Event | None = None) -> None:
        """Wait for this process's next send time (at once when one is due).

        A send time this task wakes up too late for (a busy host) is given up, and the
        task takes the next one: a gap in the schedule, never a burst.

        Args:
            stop: return early when it is set (the caller then sends nothing: a stopping
                worker releases the job instead of waiting out a slow schedule).
        """
        while True:
            at = await self._take()
            delay = at - time.monotonic()
            if delay > 0:
                if stop is None:
                    await asyncio.sleep(delay)
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
            if stop is not None and stop.is_set():
                return
            if time.monotonic() - at <= self.late_s:
                return
            self.dropped += 1

    async def _take(self) -> float:
        self._waiting += 1
        try:
            async with self._lock:
                at = self._next_time()
                while at is None:
                    count = min(self._waiting, self.max_grant)
                    await with_db_retry(partial(self._grant, count), on_retry=log_db_retry)
                    at = self._next_time()
                return at
        finally:
            self._waiting -= 1

    def _next_time(self) -> float | None:
        late = time.monotonic() - self.late_s
        while self._times and self._times[0] < late:
            self._times.popleft()  # not used in time: a gap in the schedule, never a burst
            self.dropped += 1
        return self._times.popleft() if self._times else None

    async def _grant(self, count: int) -> None:
        """Reserve ``count`` send times in the shared schedule (one statement)."""
        span = count * self.interval
        async with statement_at_a_time(self.engine) as conn:
            if not self._row_ready:
                await conn.execute(self._insert_sql, {"source": self.source})
                self._row_ready = True
            row = (await conn.execute(self._grant_sql, {"span": span, "source": self.source})).one()
        local_now = time.monotonic()
        next_free_at, db_now = float(row[0]), float(row[1])
        start = local_now + (next_free_at - span - db_now)
        self._times.extend(start + i * self.interval for i in range(count))
        self.grants += 1
