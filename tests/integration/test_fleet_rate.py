"""Fleet-wide max_rps: the request schedule kept in the database paces every limiter sharing it.

Separate engines stand for separate processes (the acceptance test runs real ones:
tests/acceptance/test_fleet_rate.py). Counted as the limiters release requests, and at
the mock API for a worker.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest

from archiver.db import create_engine, open_database
from archiver.fleet_rate import FleetRate
from archiver.migrate import migrate
from archiver.mockapi import max_in_window, start_mock_server
from archiver.queue import QueueStore
from archiver.worker import Worker

pytestmark = pytest.mark.timeout(60)


def test_max_in_window_counts_a_sliding_window() -> None:
    assert max_in_window([]) == 0
    assert max_in_window([0.0, 0.5, 0.99, 1.0, 1.5]) == 3
    assert max_in_window([0.0, 1.0, 2.0]) == 1
    assert max_in_window([i * 0.1 for i in range(30)], 1.0) == 10


async def test_limiters_on_separate_engines_share_one_schedule(db_url: str) -> None:
    engines = [create_engine(db_url) for _ in range(3)]
    try:
        await migrate(engines[0])
        limiters = [FleetRate(engine, "default", 20.0) for engine in engines]
        sent: list[float] = []

        async def fetcher(limiter: FleetRate) -> None:
            for _ in range(8):
                await limiter.acquire()
                sent.append(time.monotonic())

        started = time.monotonic()
        # Three "processes" of 4 fetchers each, 96 requests: 20 rps makes it ~4.75 s.
        await asyncio.gather(*(fetcher(limiter) for limiter in limiters for _ in range(4)))
        elapsed = time.monotonic() - started
    finally:
        for engine in engines:
            await engine.dispose()
    assert len(sent) == 96
    # 20 a second, and at most one more at the window's edge or from scheduling jitter.
    assert max_in_window(sent) <= 22, max_in_window(sent)
    assert 4.5 <= elapsed < 8, elapsed
    # A few send times per round trip, not one: the database is not asked per request.
    assert sum(limiter.grants for limiter in limiters) < 96


async def test_a_fractional_rate_spaces_requests(db_url: str) -> None:
    async with open_database(db_url) as engine:
        limiter = FleetRate(engine, "slow", 2.5)
        sent = []
        for _ in range(4):
            await limiter.acquire()
            sent.append(time.monotonic())
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    assert all(gap >= 0.35 for gap in gaps), gaps


async def test_a_worker_with_max_rps_is_paced_at_the_server(sqlite_url: str, make_settings: Any) -> None:
    async with await start_mock_server() as mock, open_database(sqlite_url) as engine:
        await QueueStore(engine).enqueue([f"resp_ok_{i}" for i in range(45)])
        settings = make_settings(sqlite_url, mock.base_url, concurrency=16, max_rps=30.0)
        summary = await Worker(settings, engine, once=True).run()
    assert summary.archived == 45
    assert mock.stats.max_in_window(1.0) <= 31, mock.stats.max_in_window(1.0)


async def test_input_item_pages_count_against_max_rps(sqlite_url: str, make_settings: Any) -> None:
    async with await start_mock_server() as mock, open_database(sqlite_url) as engine:
        await QueueStore(engine).enqueue([f"resp_manyinputs_{i}" for i in range(12)])
        settings = make_settings(
            sqlite_url, mock.base_url, concurrency=8, max_rps=20.0, with_input_items=True
        )
        summary = await Worker(settings, engine, once=True).run()
    assert summary.archived == 12
    assert mock.stats.input_items_total == 36  # three pages per response
    assert len(mock.stats.arrivals) == mock.stats.requests_total + mock.stats.input_items_total == 48
    assert mock.stats.max_in_window(1.0) <= 21, mock.stats.max_in_window(1.0)


async def test_a_stop_ends_the_wait_for_a_slow_schedule(sqlite_url: str) -> None:
    async with open_database(sqlite_url) as engine:
        limiter = FleetRate(engine, "slow", 0.2)  # one request every 5 s
        await limiter.acquire()  # the first is due at once
        stop = asyncio.Event()
        waiting = asyncio.create_task(limiter.acquire(stop))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        started = time.monotonic()
        stop.set()
        await asyncio.wait_for(waiting, 1)
        assert time.monotonic() - started < 0.5
