"""Throttling: 429s shrink the adaptive limit; --max-rps caps the request rate."""

from __future__ import annotations

import time
from typing import Any

from archiver.db import open_database
from archiver.mockapi import MockConfig, start_mock_server
from archiver.queue import QueueStore
from archiver.worker import Worker


async def test_429_storm_shrinks_the_adaptive_limit_and_everything_archives(
    sqlite_url: str, make_settings: Any
) -> None:
    ids = [f"resp_ratelimit2_{i:03d}" for i in range(40)]
    async with await start_mock_server(MockConfig(retry_after_s=0.05)) as mock:
        settings = make_settings(sqlite_url, mock.base_url, concurrency=16, max_attempts=5)
        async with open_database(sqlite_url) as engine:
            await QueueStore(engine).enqueue(ids)
            worker = Worker(settings, engine, once=True)
            summary = await worker.run()
            assert worker.gate.decreases >= 1
            assert summary.archived == 40
            assert (await QueueStore(engine).counts())["archived"] == 40
            assert mock.stats.as_dict()["status_counts"]["429"] == 80


async def test_max_rps_caps_the_request_rate(sqlite_url: str, make_settings: Any) -> None:
    ids = [f"resp_ok_rps{i:03d}" for i in range(30)]
    async with await start_mock_server() as mock:
        settings = make_settings(sqlite_url, mock.base_url, concurrency=16, max_rps=20.0)
        async with open_database(sqlite_url) as engine:
            await QueueStore(engine).enqueue(ids)
            started = time.monotonic()
            summary = await Worker(settings, engine, once=True).run()
            elapsed = time.monotonic() - started
    assert summary.archived == 30
    # A leaky bucket of 20/s lets the first 20 through at once; the other 10 need >= 0.5 s.
    # This is a lower bound the limiter guarantees, not a speed measurement.
    assert elapsed >= 0.45
