"""The metrics endpoint over real loopback HTTP, and the queue gauges from a real database."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
import structlog
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from archiver.db import open_database
from archiver.errors import ConfigError
from archiver.metrics import (
    ARCHIVED_COUNT_SHARE,
    Metrics,
    MetricsServer,
    QueueGauges,
    queue_gauge_loop,
    start_metrics_server,
)
from archiver.outcomes import Archived
from archiver.queue import QueueStore

pytestmark = pytest.mark.timeout(60)


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


async def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def set_queue_table(url: str, old: str, new: str) -> None:
    """Rename the queue table through another connection."""
    async with open_database(url, upgrade=False) as other, other.begin() as conn:
        await conn.execute(text(f"ALTER TABLE {old} RENAME TO {new}"))


def ids(n: int) -> list[str]:
    run = uuid.uuid4().hex[:8]
    return [f"resp_{run}_{i:04d}" for i in range(n)]


# --- HTTP endpoint -------------------------------------------------------------------------


async def test_metrics_endpoint_serves_the_text_format() -> None:
    metrics = Metrics()
    metrics.observe_fetch(Archived(b"{}", 200, True, "completed"), None, 0.25)
    async with await start_metrics_server(metrics, port=0) as server, aiohttp.ClientSession() as http:
        assert server.port > 0 and server.url == f"http://127.0.0.1:{server.port}"
        async with http.get(f"{server.url}/metrics") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == CONTENT_TYPE_LATEST
            text = await resp.text()
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        assert samples[("archiver_fetches_total", (("outcome", "archived"), ("status_code", "200")))] == 1
        assert samples[("archiver_request_duration_seconds_count", ())] == 1

        # Each scrape shows the registry as it is now.
        metrics.observe_fetch(Archived(b"{}", 200, True, "completed"), None, 0.25)
        async with http.get(f"{server.url}/metrics") as resp:
            assert 'archiver_fetches_total{outcome="archived",status_code="200"} 2.0' in await resp.text()

        async with http.get(f"{server.url}/nothing-here") as resp:
            assert resp.status == 404


async def test_healthz_follows_is_live() -> None:
    probe: dict[str, bool | Exception] = {"answer": True}

    def is_live() -> bool:
        answer = probe["answer"]
        if isinstance(answer, Exception):
            raise answer
        return answer

    async with (
        await start_metrics_server(Metrics(), port=0, is_live=is_live) as server,
        aiohttp.ClientSession() as http,
    ):
        async with http.get(f"{server.url}/healthz") as resp:
            assert (resp.status, await resp.text()) == (200, "ok\n")
        probe["answer"] = False
        async with http.get(f"{server.url}/healthz") as resp:
            assert (resp.status, await resp.text()) == (503, "unhealthy\n")
        probe["answer"] = RuntimeError("health probe broke")
        async with http.get(f"{server.url}/healthz") as resp:
            assert resp.status == 503
        probe["answer"] = True
        async with http.get(f"{server.url}/healthz") as resp:
            assert resp.status == 200


async def test_server_listens_on_loopback_only_by_default_and_closes() -> None:
    server = await start_metrics_server(Metrics(), port=0)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=2):
            pass
        assert server.host == "127.0.0.1"
    finally:
        await server.close()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", server.port), timeout=2):
        pass


async def test_a_port_in_use_is_a_config_error() -> None:
    async with await start_metrics_server(Metrics(), port=0) as first:
        with pytest.raises(ConfigError, match=rf"cannot serve metrics on 127\.0\.0\.1:{first.port}"):
            await start_metrics_server(Metrics(), port=first.port)


# --- queue gauges ------------------------------------------------------------------------------


async def test_queue_gauge_loop_shows_the_queue(db_url: str) -> None:
    metrics = Metrics()
    stop = asyncio.Event()

    async def near_expiry() -> int:
        return 4

    async with open_database(db_url) as engine:
        queue = QueueStore(engine)
        await queue.enqueue(ids(37))
        loop = asyncio.create_task(queue_gauge_loop(metrics, queue, 0.05, stop, near_expiry))
        try:
            await eventually(lambda: value(metrics, "archiver_queue_rows", state="pending") == 37)
            assert value(metrics, "archiver_queue_rows", state="archived") == 0
            assert value(metrics, "archiver_pending_near_expiry") == 4
            assert (value(metrics, "archiver_oldest_pending_age_seconds") or 0) >= 0
            assert (value(metrics, "archiver_queue_refresh_timestamp_seconds") or 0) > 0

            await queue.enqueue(ids(5))
            await eventually(lambda: value(metrics, "archiver_queue_rows", state="pending") == 42)
            assert value(metrics, "archiver_queue_refresh_failures_total") == 0
        finally:
            stop.set()
            await asyncio.wait_for(loop, 5)


async def test_queue_gauge_loop_survives_a_broken_database(sqlite_url: str, tmp_path: Path) -> None:
    metrics = Metrics()
    stop = asyncio.Event()
    async with open_database(sqlite_url) as engine:
        queue = QueueStore(engine)
        await queue.enqueue(ids(5))
        with structlog.testing.capture_logs() as logs:
            loop = asyncio.create_task(queue_gauge_loop(metrics, queue, 0.05, stop))
            try:
                await eventually(lambda: value(metrics, "archiver_queue_rows", state="pending") == 5)

                # Break it: the queue table disappears under the loop. (Not the file: the
                # engine then refuses to open whatever is at its path, see test_database_safety.)
                await set_queue_table(sqlite_url, "archive_queue", "archive_queue_away")
                await eventually(lambda: (value(metrics, "archiver_queue_refresh_failures_total") or 0) >= 3)
                assert not loop.done()
                assert value(metrics, "archiver_queue_rows", state="pending") == 5  # last known value
                failures = [e for e in logs if e["event"] == "archiver.metrics_refresh_failed"]
                assert failures and failures[0]["log_level"] == "warning"
                assert "archive_queue" in failures[0]["error"]

                # Repair it: the table comes back with 3 rows; the loop recovers.
                await set_queue_table(sqlite_url, "archive_queue_away", "archive_queue")
                async with open_database(sqlite_url) as repaired:
                    async with repaired.begin() as conn:
                        await conn.execute(text("DELETE FROM archive_queue"))
                    await QueueStore(repaired).enqueue(ids(3))
                await eventually(lambda: value(metrics, "archiver_queue_rows", state="pending") == 3)
                assert not loop.done()
            finally:
                stop.set()
                await asyncio.wait_for(loop, 5)
        assert loop.exception() is None


async def test_queue_gauge_loop_stops_at_once_during_a_long_interval(sqlite_url: str) -> None:
    metrics = Metrics()
    stop = asyncio.Event()
    async with open_database(sqlite_url) as engine:
        loop = asyncio.create_task(queue_gauge_loop(metrics, QueueStore(engine), 3600, stop))
        await eventually(lambda: (value(metrics, "archiver_queue_refresh_timestamp_seconds") or 0) > 0)
        stop.set()
        await asyncio.wait_for(loop, 2)


async def test_scrape_shows_the_queue_gauges(sqlite_url: str) -> None:
    metrics = Metrics()
    stop = asyncio.Event()
    async with open_database(sqlite_url) as engine:
        queue = QueueStore(engine)
        await queue.enqueue(ids(11))
        loop = asyncio.create_task(queue_gauge_loop(metrics, queue, 0.05, stop))
        server: MetricsServer = await start_metrics_server(metrics, port=0)
        try:
            await eventually(lambda: value(metrics, "archiver_queue_rows", state="pending") == 11)
            async with aiohttp.ClientSession() as http, http.get(f"{server.url}/metrics") as resp:
                assert 'archiver_queue_rows{state="pending"} 11.0' in await resp.text()
        finally:
            await server.close()
            stop.set()
            await asyncio.wait_for(loop, 5)


async def test_a_slow_archived_count_is_retaken_only_as_its_share_of_time_allows(db_url: str) -> None:
    """Counting archived rows reads the whole queue: after a count that took t s the next
    waits t / ARCHIVED_COUNT_SHARE s, while the states with a partial index are counted each time."""
    clock = {"now": 1000.0}

    def tick() -> float:
        clock["now"] += 0.5  # each reading of the clock: half a second later (a slow database)
        return clock["now"]

    metrics = Metrics()
    async with open_database(db_url) as engine:
        queue = QueueStore(engine)
        gauges = QueueGauges(queue, clock=tick)
        first = ids(3)
        await queue.enqueue(first)
        await gauges.refresh(metrics)  # archived counted in "half a second" (two clock readings)
        assert value(metrics, "archiver_queue_rows", state="archived") == 0
        async with engine.begin() as conn:
            await conn.execute(
                text("UPDATE archive_queue SET state = 'archived' WHERE id = :id"), {"id": first[0]}
            )
        await gauges.refresh(metrics)
        assert value(metrics, "archiver_queue_rows", state="pending") == 2
        assert value(metrics, "archiver_queue_rows", state="archived") == 0  # the last count, kept
        clock["now"] += 1 / ARCHIVED_COUNT_SHARE
        await gauges.refresh(metrics)
        assert value(metrics, "archiver_queue_rows", state="archived") == 1
