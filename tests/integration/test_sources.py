"""Several sources in one run: each ID fetched with its own source's URL and key; a refused
key pauses only its source; status counts per source; rows of an unserved source reported."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from archiver import commands
from archiver.db import open_database
from archiver.errors import StopRun
from archiver.health import run_checks
from archiver.metrics import Metrics
from archiver.mockapi import MockConfig, MockServer, start_mock_server
from archiver.queue import QueueStore
from archiver.runner import Runner
from archiver.settings import Settings
from archiver.sources import SourceRouting, load_config, source_settings

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def two_mocks() -> AsyncIterator[tuple[MockServer, MockServer]]:
    async with (
        await start_mock_server(MockConfig(api_key="key-of-a", latency_ms=10)) as a,
        await start_mock_server(MockConfig(api_key="key-of-b")) as b,
    ):
        yield a, b


def sources_for(
    tmp_path: Path, make_settings: Any, db_url: str, a: MockServer, b: MockServer, key_b: str = "key-of-b"
) -> dict[str, Settings]:
    (tmp_path / "b.key").write_text(key_b + "\n")
    path = tmp_path / "sources.toml"
    path.write_text(
        f'[sources.a]\nbase_url = "{a.base_url}"\napi_key_env = "KEY_A"\nconcurrency = 4\n'
        'provider = "openai"\n'
        f'[sources.b]\nbase_url = "{b.base_url}"\napi_key_file = "{tmp_path / "b.key"}"\n',
        encoding="utf-8",
    )
    base: Settings = make_settings(db_url)
    return source_settings(base, load_config(str(path)), {"KEY_A": "key-of-a"})


async def enqueue(engine: Any, ids: list[str], source: str) -> None:
    await QueueStore(engine).enqueue(ids, sources=[source] * len(ids))


async def states_by_source(engine: Any) -> dict[str, dict[str, int]]:
    return await QueueStore(engine).counts_by_source()


async def test_each_source_is_fetched_with_its_own_url_and_key(
    db_url: str, make_settings: Any, tmp_path: Path, two_mocks: tuple[MockServer, MockServer]
) -> None:
    a, b = two_mocks
    sources = sources_for(tmp_path, make_settings, db_url, a, b)
    assert list(sources) == ["a", "b"]  # no key or base URL for `default`: not served
    ids_a = [f"resp_ok_a{i}" for i in range(40)]
    ids_b = [f"resp_ok_b{i}" for i in range(30)]
    async with open_database(db_url) as engine:
        await enqueue(engine, ids_a, "a")
        await enqueue(engine, ids_b, "b")
        await QueueStore(engine).enqueue(["resp_ok_default"])  # a plain row: source default
        summary = await Runner(sources, engine, once=True).run()
        by_source = await states_by_source(engine)
        details = await QueueStore(engine).status_details(served_sources=["a", "b"])
    assert summary.archived == 70
    assert by_source["a"]["archived"] == 40 and by_source["b"]["archived"] == 30
    assert by_source["default"]["pending"] == 1
    # Seen from the servers: every ID went to its own source's server, with the right key.
    assert set(a.stats.requests_by_id) == set(ids_a) and set(b.stats.requests_by_id) == set(ids_b)
    assert set(a.stats.status_counts) == {"200"} and set(b.stats.status_counts) == {"200"}
    # Each source's own rules: a's concurrency and its provider's include[] values.
    assert a.stats.max_in_flight <= 4
    assert set(a.stats.include_by_id) == set(ids_a) and not b.stats.include_by_id
    assert details["sources"]["a"]["archived"] == 40 and details["sources"]["b"]["archived"] == 30
    assert details["unserved_sources"] == {"default": 1}
    lines = commands.source_lines(details)
    assert any(line.strip().startswith("a ") and "archived 40" in line for line in lines), lines
    assert any("source 'default' is not configured: 1 row waits" in line for line in lines), lines
    problems = (await run_checks(db_url, served_sources=["a", "b"])).problems
    assert any("source 'default' is not configured" in p for p in problems), problems


async def test_a_refused_key_stops_only_its_source_in_a_backfill(
    db_url: str, make_settings: Any, tmp_path: Path, two_mocks: tuple[MockServer, MockServer]
) -> None:
    a, b = two_mocks
    sources = sources_for(tmp_path, make_settings, db_url, a, b, key_b="wrong-key")
    ids_a = [f"resp_ok_a{i}" for i in range(60)]
    ids_b = [f"resp_ok_b{i}" for i in range(20)]
    async with open_database(db_url) as engine:
        await enqueue(engine, ids_a, "a")
        await enqueue(engine, ids_b, "b")
        runner = Runner(sources, engine, once=True)
        with pytest.raises(StopRun, match="source 'b'"):
            await runner.run()
        by_source = await states_by_source(engine)
    assert by_source["a"]["archived"] == 60
    # b's rows stay pending, no attempt spent: they wait for a good key.
    assert by_source["b"]["pending"] == 20 and by_source["b"]["archived"] == 0
    assert set(b.stats.status_counts) == {"401"}


async def test_the_daemon_pauses_a_refused_source_and_shows_it(
    db_url: str, make_settings: Any, tmp_path: Path, two_mocks: tuple[MockServer, MockServer]
) -> None:
    a, b = two_mocks
    sources = sources_for(tmp_path, make_settings, db_url, a, b, key_b="wrong-key")
    metrics = Metrics()
    async with open_database(db_url) as engine:
        await enqueue(engine, [f"resp_ok_b{i}" for i in range(10)], "b")
        runner = Runner(sources, engine, once=False, metrics=metrics)
        task = asyncio.create_task(runner.run())
        try:
            await enqueue(engine, [f"resp_ok_a{i}" for i in range(50)], "a")
            deadline = time.monotonic() + 30
            while True:
                details = await QueueStore(engine).status_details(served_sources=["a", "b"])
                refused = [w for w in details["workers"] if w["state"] == "refused"]
                if details["sources"].get("a", {}).get("archived") == 50 and refused:
                    break
                assert time.monotonic() < deadline, details
                await asyncio.sleep(0.05)
            assert [w["owner"].rsplit("/", 1)[-1] for w in refused] == ["b"]
            assert details["sources"]["b"]["archived"] == 0
            problems = (await run_checks(db_url, served_sources=["a", "b"])).problems
            assert any("key refused" in p and "/b" in p for p in problems), problems
            text = metrics.render().decode()
            assert 'archiver_source_up{source="b"} 0.0' in text
            assert 'archiver_source_up{source="a"} 1.0' in text
            assert not runner.is_healthy()
        finally:
            runner.request_stop("test over")
            await task


async def test_enqueue_routes_ids_to_their_sources(db_url: str, tmp_path: Path) -> None:
    path = tmp_path / "ids.jsonl"
    path.write_text('{"id": "resp_1", "source": "a"}\nresp_2\n{"id": "resp_3", "source": "zz"}\n')
    settings = Settings(database_url=db_url, source="b")
    err = tmp_path / "err.txt"
    with err.open("w") as stream:
        report = await commands.enqueue(
            settings, [str(path)], err=stream, routing=SourceRouting("b", frozenset({"default", "a", "b"}))
        )
    assert (report.queued, report.rejected) == (2, 1)
    assert "unknown source 'zz'" in err.read_text()
    async with open_database(db_url) as engine:
        by_source = await states_by_source(engine)
    assert {name: c["pending"] for name, c in by_source.items()} == {"a": 1, "b": 1}
