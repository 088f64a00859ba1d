"""``archiver status`` says why a source's IDs wait: held sources (archiver/holds.py).

A daemon whose endpoint answers plain 404s for every path, whose key is refused (401) or
whose account is refused for billing (``Arrearage``) keeps its IDs ``pending`` without
spending attempts. Against hostile servers written here (they echo the API key, a canary
of no known key shape, in their error text), on SQLite and on PostgreSQL, status and
``status --json`` show the hold while it lasts (what, why, the last error, since when,
the next probe, who holds it) and nothing once the server recovers; the canary never
reaches the status output nor any table. A fleet: a worker with a wrong key holds the
source while another fetches it; a dead worker's hold turns stale, then disappears.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from archiver import breaker, commands
from archiver.db import now_sql, open_database
from archiver.errors import StopRun
from archiver.holds import STALE_AFTER_S, Hold
from archiver.mockapi import MockConfig, body_for, start_mock_server
from archiver.queue import QueueStore
from archiver.redaction import register_secret
from archiver.runner import Runner
from archiver.schema import metadata
from archiver.worker import Worker
from archiver.workers import DEFAULT_MAX_AGE_S, record_worker
from tests.canaries import leaks
from tests.loopback import serving

pytestmark = pytest.mark.timeout(60)

KEY = "Pw4-canary/Hq8+zN2vXc7Lr"
"""No known key shape (no ``sk-``): only its registration (as the CLI does) masks it."""
ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\Z")
STATE = {
    "plain_404": "paused",
    "redirect": "paused",
    "5xx": "paused",
    "refused": "refused",
    "billing": "refused",
}


def broken_answer(kind: str, request: web.Request) -> web.Response:
    """What the hostile server answers while broken: every path, the key echoed."""
    echoed = request.headers.get("Authorization", "").removeprefix("Bearer ")
    if kind == "plain_404":
        return web.Response(status=404, text=f"404: Not Found (you sent {echoed})")
    if kind == "redirect":
        return web.Response(status=302, headers={"Location": f"https://127.0.0.1:1/v1?key={echoed}"})
    if kind == "5xx":
        return web.json_response({"error": {"message": f"upstream down for {echoed}"}}, status=503)
    if kind == "refused":
        error = {"message": f"Incorrect API key provided: {echoed}", "code": "invalid_api_key"}
        return web.json_response({"error": error}, status=401)
    return web.json_response({"code": "Arrearage", "message": f"account of {echoed} in arrears"}, status=400)


async def wait_until(check: Callable[[], Awaitable[Any]], what: str, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := await check()):
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)
    return value


async def table_text(engine: AsyncEngine) -> str:
    """Every value of every table, as text."""
    values: list[str] = []
    async with engine.connect() as conn:
        for table in metadata.sorted_tables:
            for row in (await conn.execute(select(table))).mappings():
                values += [json.dumps(v, default=str, ensure_ascii=False) for v in row.values()]
    return "\n".join(values)


async def hold_columns(engine: AsyncEngine) -> list[tuple[Any, ...]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT source, state, hold_kind, hold_error, next_probe_at FROM archive_workers")
        )
        return [tuple(r) for r in rows]


@pytest.mark.parametrize("kind", ["plain_404", "redirect", "5xx", "refused", "billing"])
async def test_status_says_why_a_source_is_held_and_forgets_it_on_recovery(
    db_url: str, make_settings: Any, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    register_secret(KEY)  # as the CLI does with every key it reads
    monkeypatch.setattr(breaker, "PAUSE_FIRST_S", 1.5)
    monkeypatch.setattr(breaker, "PAUSE_MAX_S", 1.5)
    monkeypatch.setattr(breaker, "STREAK_5XX_MIN_S", 0.2)
    broken = {"on": True}

    async def answer(request: web.Request) -> web.Response:
        if broken["on"]:
            return broken_answer(kind, request)
        rid = request.match_info["tail"].rsplit("/", 1)[-1]
        return web.Response(body=body_for(rid), content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    queued = [f"resp_held{uuid.uuid4().hex[:6]}{i:02d}" for i in range(12)]
    async with serving(app) as origin:
        settings = make_settings(db_url, f"{origin}/v1", api_key=KEY)
        async with open_database(db_url) as engine:
            await QueueStore(engine).enqueue(queued)
            worker = Worker(settings, engine, once=False)
            task = asyncio.create_task(worker.run())

            async def held() -> dict[str, Any] | None:
                details = await commands.status(settings)
                # Fetches in flight at the trip are given back as they end; ``workers`` is
                # read by a statement of its own, maybe before the worker's row said paused.
                settled = details["states"]["pending"] == len(queued) and details["workers"]
                return details if details["held_sources"] and settled else None

            try:
                details = await wait_until(held, "status never showed the hold")
                (name,) = details["held_sources"]
                hold = details["held_sources"][name]
                assert name == "default"
                assert hold["kind"] == kind and hold["state"] == STATE[kind]
                assert hold["reason"] and hold["last_error"]
                assert "***" in hold["last_error"]  # the echoed key, masked
                if kind == "plain_404":
                    assert "plain 404" in hold["reason"] and "plain 404" in hold["last_error"]
                elif kind in ("redirect", "5xx"):
                    assert {"redirect": "302", "5xx": "503"}[kind] in hold["last_error"]
                elif kind == "refused":
                    assert "401" in hold["last_error"] and "API key" in hold["last_error"]
                else:
                    assert "billing" in hold["last_error"] and "Arrearage" in hold["last_error"]
                assert hold["endpoint"] == f"{origin}/v1/responses/…"
                assert ISO.match(hold["since"]) and ISO.match(hold["next_probe_at"])
                assert 0 <= hold["held_for_s"] < 30
                assert 0 <= hold["next_probe_in_s"] <= 1.5
                assert 0 <= hold["reported_age_s"] < 30 and hold["stale"] is False
                assert hold["pending"] == len(queued)
                assert [h["owner"] for h in hold["holders"]] == [settings.owner]
                assert hold["fetching"] == []
                # Existing keys keep their meaning: the worker is listed as before.
                assert [w["owner"] for w in details["workers"]] == [settings.owner]
                human = commands.format_status(details)
                assert "held sources (their IDs stay pending, no attempt spent):" in human
                assert "  default: " in human
                assert f"last error: {hold['last_error']}" in human
                assert "next probe " in human and f"held by {settings.owner}" in human
                assert "workers not fetching" not in human  # said once, under the source
                shown = commands.dumps(details) + human
                assert leaks(shown.encode(), KEY) == []
                assert leaks((await table_text(engine)).encode(), KEY) == []
                metrics = worker.metrics.render().decode()
                assert f'archiver_source_held{{kind="{kind}",source="default"}} 1.0' in metrics

                broken["on"] = False

                async def recovered() -> dict[str, Any] | None:
                    details = await commands.status(settings)
                    done = details["states"]["archived"] == len(queued) and not details["held_sources"]
                    return details if done else None

                details = await wait_until(recovered, "the hold outlived the recovery")
                assert details["workers"] == []
                human = commands.format_status(details)
                assert "held sources" not in human and "last error" not in human
                assert await hold_columns(engine) == [("default", "ok", None, None, None)]
                metrics = worker.metrics.render().decode()
                assert f'archiver_source_held{{kind="{kind}",source="default"}} 0.0' in metrics
                assert leaks((await table_text(engine)).encode(), KEY) == []
            finally:
                worker.request_stop("test over")
                await task


async def test_a_fleet_shows_who_holds_a_source_and_who_still_fetches_it(
    db_url: str, make_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two daemons on one database: one with a wrong key holds the source, one fetches it."""
    monkeypatch.setattr(breaker, "PAUSE_FIRST_S", 30.0)
    queued = [f"resp_fleet{uuid.uuid4().hex[:6]}{i:02d}" for i in range(20)]
    async with await start_mock_server(MockConfig(api_key="right-key-24680")) as mock:
        wrong = make_settings(db_url, mock.base_url, api_key="wrong-key-13579", owner="host-a:1")
        right = make_settings(db_url, mock.base_url, api_key="right-key-24680", owner="host-b:2")
        async with open_database(db_url) as engine:
            await QueueStore(engine).enqueue(queued)
            holder = Worker(wrong, engine, once=False)
            fetcher = Worker(right, engine, once=False)
            tasks = [asyncio.create_task(holder.run())]
            try:
                await wait_until(
                    lambda: asyncio.sleep(0, holder.breaker.trips), "the wrong key never tripped"
                )
                tasks.append(asyncio.create_task(fetcher.run()))

                async def settled() -> dict[str, Any] | None:
                    details = await commands.status(right)
                    hold = details["held_sources"].get("default")
                    done = details["states"]["archived"] == len(queued) and hold and hold["fetching"]
                    return details if done else None

                details = await wait_until(settled, "status never showed the holder and the fetcher")
                hold = details["held_sources"]["default"]
                assert hold["kind"] == "refused" and hold["pending"] == 0
                assert [h["owner"] for h in hold["holders"]] == ["host-a:1"]
                assert hold["fetching"] == ["host-b:2"]
                assert 25 < hold["next_probe_in_s"] <= 30
                human = commands.format_status(details)
                assert "held by host-a:1" in human and "still fetching it: host-b:2" in human
            finally:
                holder.request_stop("test over")
                fetcher.request_stop("test over")
                await asyncio.gather(*tasks)


async def test_a_backfill_says_why_a_stopped_source_waits_while_the_others_drain(
    db_url: str, make_settings: Any
) -> None:
    """``run --once`` of two sources: the refused one stops, its hold stays shown until the run ends."""
    register_secret(KEY)
    app = web.Application()

    async def refuse(request: web.Request) -> web.Response:
        return broken_answer("refused", request)

    app.router.add_route("*", "/{tail:.*}", refuse)
    ids_a = [f"resp_drain{uuid.uuid4().hex[:6]}{i:03d}" for i in range(100)]
    ids_b = [f"resp_stop{uuid.uuid4().hex[:6]}{i:02d}" for i in range(10)]
    async with serving(app) as origin, await start_mock_server(MockConfig(latency_ms=40)) as mock:
        sources = {
            "a": make_settings(db_url, mock.base_url, source="a", concurrency=2),
            "b": make_settings(db_url, f"{origin}/v1", source="b", api_key=KEY),
        }
        async with open_database(db_url) as engine:
            queue = QueueStore(engine)
            await queue.enqueue(ids_a, sources=["a"] * len(ids_a))
            await queue.enqueue(ids_b, sources=["b"] * len(ids_b))
            runner = Runner(sources, engine, once=True)
            task = asyncio.create_task(runner.run())

            async def b_stopped() -> bool:
                return runner.workers["b"].summary.duration_s > 0  # set as its run() ends

            await wait_until(b_stopped, "source b never stopped")
            await asyncio.sleep(0.3)  # a row b's run did not keep would be gone by now
            details = await commands.status(sources["a"])
            hold = details["held_sources"]["b"]
            assert hold["kind"] == "refused" and hold["holders"][0]["owner"].endswith("/b")
            assert hold["next_probe_at"] is None and hold["next_probe_in_s"] is None
            assert "***" in hold["last_error"]
            assert details["sources"]["a"]["archived"] < len(ids_a)  # a is still draining
            human = commands.format_status(details)
            assert "no probe: a run --once stopped fetching it; the next run tries again" in human
            assert leaks((commands.dumps(details) + human).encode(), KEY) == []
            with pytest.raises(StopRun, match="source 'b'"):
                await task
            details = await commands.status(sources["a"])
            assert details["sources"]["a"]["archived"] == len(ids_a)
            assert details["held_sources"] == {} and details["workers"] == []  # the run ended


async def record_connect_hold(engine: AsyncEngine, owner: str, probe_in_s: float = 5.0) -> None:
    """Record ``owner`` as a worker holding source ``default``: it cannot connect."""
    await record_worker(
        engine,
        owner,
        state="paused",
        detail="cannot connect",
        base_url="http://127.0.0.1:9/v1/responses/…",
        source="default",
        hold=Hold("connect", "connection refused", probe_in_s),
    )


async def _age(engine: AsyncEngine, owner: str, seconds: float) -> None:
    """Pretend the row was last written ``seconds`` ago (its probe was due 5 s after that)."""
    now = now_sql(engine.dialect.name)
    async with engine.begin() as conn:
        await conn.execute(
            text(
                f"UPDATE archive_workers SET updated_at = {now} - :s, next_probe_at = {now} - :s + 5 "
                "WHERE owner = :owner"
            ),
            {"s": seconds, "owner": owner},
        )


async def test_a_dead_workers_hold_turns_stale_then_disappears(db_url: str, make_settings: Any) -> None:
    settings = make_settings(db_url)
    async with open_database(db_url) as engine:
        await record_connect_hold(engine, "gone:9")
        hold = (await commands.status(settings))["held_sources"]["default"]
        assert hold["kind"] == "connect" and hold["stale"] is False
        await _age(engine, "gone:9", STALE_AFTER_S + 5)
        details = await commands.status(settings)
        hold = details["held_sources"]["default"]
        assert hold["stale"] is True and hold["reported_age_s"] > STALE_AFTER_S
        assert hold["next_probe_in_s"] == 0  # overdue: not a time in the past
        human = commands.format_status(details)
        assert "(stale: is that worker still running?)" in human and "next probe overdue" in human
        await _age(engine, "gone:9", DEFAULT_MAX_AGE_S + 5)
        assert (await commands.status(settings))["held_sources"] == {}
