"""Adaptive concurrency (AIMD) below ``--concurrency``, and an optional request-rate ceiling.

A throttled account must converge instead of hammering: every 429 or timeout halves the
number of requests allowed in flight (at most once per cool-down, so one burst of 429s
counts once), and each full window of successes adds one back, up to ``--concurrency``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable


class AdaptiveLimit:
    """An AIMD gate: at most ``limit`` holders at once, ``min_limit <= limit <= max_limit``.

    Args:
        max_limit: the ceiling (``--concurrency``).
        min_limit: the floor.
        decrease_factor: multiplier applied on a congestion signal.
        cooldown_s: congestion signals closer together than this count once.
        clock: monotonic clock (tests pass their own).
    """

    def __init__(
        self,
        max_limit: int,
        *,
        min_limit: int = 1,
        decrease_factor: float = 0.5,
        cooldown_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_limit < 1 or not 1 <= min_limit <= max_limit:
            raise ValueError("need 1 <= min_limit <= max_limit")
        self.max_limit = max_limit
        self.min_limit = min_limit
        self.limit = max_limit
        self.in_use = 0
        self.decreases = 0
        self._factor = decrease_factor
        self._cooldown = cooldown_s
        self._clock = clock
        self._last_decrease = -math.inf
        self._successes = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> None:
        """Wait for a free place under the current limit (no await when one is free)."""
        if self.in_use < self.limit and not self._waiters:
            self.in_use += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.in_use -= 1  # the place was handed over just as we were cancelled
                self._wake()
            else:
                self._waiters.remove(waiter)
            raise

    async def release(self, *, congested: bool = False) -> None:
        """Give a place back, reporting how the request went.

        Args:
            congested: the request met a 429 or a timeout (multiplicative decrease);
                otherwise it counts as a success (additive increase).
        """
        self.in_use -= 1
        if congested:
            self._decrease()
        else:
            self._increase()
        self._wake()

    def _wake(self) -> None:
        # Hand free places to waiters in arrival order (in_use counts them at once).
        while self._waiters and self.in_use < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_use += 1
                waiter.set_result(None)

    def _increase(self) -> None:
        if self.limit >= self.max_limit:
            return
        self._successes += 1
        if self._successes >= self.limit:
            self._successes = 0
            self.limit += 1

    def _decrease(self) -> None:
        now = self._clock()
        if now - self._last_decrease < self._cooldown:
            return
        self._last_decrease = now
        self._successes = 0
        new_limit = max(self.min_limit, math.floor(self.limit * self._factor))
        if new_limit < self.limit:
            self.limit = new_limit
            self.decreases += 1
