"""Endpoint-wide failures stop the run (or pause the daemon); they never burn the queue.

Each fault is made to happen against a hostile server written here (loopback only) or
the project's mock: a base URL without /v1 (plain 404 of an unknown route), redirects,
a closed port, a run of 5xx, a key refused on one ID or on every ID, and IDs that other
applications inserted without validation. The promise checked every time: IDs caught
in an endpoint-wide failure stay ``pending`` with their attempts given back.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from archiver import breaker
from archiver.db import open_database
from archiver.errors import EndpointDown, StopRun
from archiver.mockapi import MockConfig, body_for, start_mock_server
from archiver.queue import QueueStore
from archiver.worker import Worker
from archiver.workers import worker_problems

pytestmark = pytest.mark.timeout(90)


def ids(n: int, prefix: str = "resp_bk") -> list[str]:
    tag = uuid.uuid4().hex[:6]
    return [f"{prefix}{tag}{i:03d}" for i in range(n)]


async def states(engine: AsyncEngine) -> dict[str, tuple[str, int, str | None]]:
    async with engine.connect() as conn:
        rows = (await conn.execute(text("SELECT id, state, attempts, last_error FROM archive_queue"))).all()
    return {r[0]: (r[1], int(r[2]), r[3]) for r in rows}


@dataclass
class Hostile:
    """A small aiohttp server whose answer per request is chosen by the test."""

    answer: Callable[[web.Request], web.StreamResponse]
    seen: list[str] = field(default_factory=list)
    base_url: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(request.raw_path)
        return self.answer(request)


@pytest.fixture
async def hostile() -> AsyncIterator[Callable[[Callable[[web.Request], web.StreamResponse]], Any]]:
    runners: list[web.AppRunner] = []

    async def start(answer: Callable[[web.Request], web.StreamResponse]) -> Hostile:
        server = Hostile(answer)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", server.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        server.base_url = f"http://127.0.0.1:{port}/v1"
        return server

    yield start
    for runner in runners:
        await runner.cleanup()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def run_once(settings: Any, engine: AsyncEngine) -> tuple[BaseException | None, float]:
    started = time.monotonic()
    try:
        await Worker(settings, engine, once=True).run()
    except (EndpointDown, StopRun) as exc:
        return exc, time.monotonic() - started
    return None, time.monotonic() - started


async def wait_for_problems(engine: AsyncEngine) -> list[str]:
    deadline = time.monotonic() + 5
    while not (problems := await worker_problems(engine)):
        assert time.monotonic() < deadline, "the worker never reported itself"
        await asyncio.sleep(0.02)
    return problems


async def assert_all_pending_unspent(engine: AsyncEngine, queued: list[str]) -> None:
    rows = await states(engine)
    assert set(rows) == set(queued)
    wrong = {rid: row for rid, row in rows.items() if row[0] != "pending" or row[1] != 0}
    assert not wrong, f"IDs caught in an endpoint failure were marked or spent: {list(wrong.items())[:5]}"


async def test_base_url_without_v1_stops_with_exit_4_and_keeps_every_id(
    db_url: str, make_settings: Any
) -> None:
    queued = ids(40)
    async with await start_mock_server(MockConfig()) as mock:
        without_v1 = mock.base_url.removesuffix("/v1")
        settings = make_settings(db_url, without_v1, max_attempts=8)
        async with open_database(db_url) as engine:
            await QueueStore(engine).enqueue(queued)
            exc, elapsed = await run_once(settings, engine)
            assert isinstance(exc, EndpointDown)
            assert exc.exit_code == 4
            message = str(exc)
            assert "plain 404" in message and "/v1" in message
            assert without_v1.split("//")[1] in message  # names the endpoint
            assert "\n" not in message
            assert elapsed < 10
            await assert_all_pending_unspent(engine, queued)
            # Far fewer requests than IDs: the run stopped instead of marching the queue.
            assert mock.stats.requests_total <= 2 * settings.concurrency


async def test_redirecting_base_url_stops_and_never_follows(
    db_url: str, make_settings: Any, hostile: Any
) -> None:
    server = await hostile(
        lambda request: web.Response(
            status=301, headers={"Location": "https://127.0.0.1:1/v1" + request.path}
        )
    )
    queued = ids(30)
    settings = make_settings(db_url, server.base_url)
    async with open_database(db_url) as engine:
        await QueueStore(engine).enqueue(queued)
        exc, _ = await run_once(settings, engine)
        assert isinstance(exc, EndpointDown)
        assert "redirect" in str(exc) and "https://127.0.0.1:1/v1" in str(exc)
        await assert_all_pending_unspent(engine, queued)
    # Every request went to the hostile server itself: nothing followed the Location.
    assert all(path.startswith("/v1/responses/") for path in server.seen)


async def test_unreachable_host_stops_fast_with_exit_4(db_url: str, make_settings: Any) -> None:
    queued = ids(20)
    settings = make_settings(db_url, f"http://127.0.0.1:{closed_port()}/v1", max_attempts=8)
    async with open_database(db_url) as engine:
        await QueueStore(engine).enqueue(queued)
        exc, elapsed = await run_once(settings, engine)
        assert isinstance(exc, EndpointDown)
        assert "cannot connect" in str(exc)
        assert elapsed < 10  # was 113 s of retries before every ID ended failed
        await assert_all_pending_unspent(engine, queued)


async def test_an_ipv6_endpoint_is_shown_with_its_brackets(db_url: str, make_settings: Any) -> None:
    queued = ids(3)
    settings = make_settings(db_url, f"http://[::1]:{closed_port()}/v1")
    async with open_database(db_url) as engine:
        await QueueStore(engine).enqueue(queued)
        exc, _ = await run_once(settings, engine)
        assert isinstance(exc, EndpointDown)
        assert "http://[::1]:" in str(exc)
        await assert_all_pending_unspent(engine, queued)


async def test_a_single_id_with_a_plain_404_still_trips(db_url: str, make_settings: Any) -> None:
    # Fewer IDs than the threshold: nothing else will answer, so the endpoint is blamed.
    queued = ids(1)
    async with await start_mock_server(MockConfig()) as mock:
        settings = make_settings(db_url, mock.base_url.removesuffix("/v1"))
        async with open_database(db_url) as engine:
            await QueueStore(engine).enqueue(queued)
            exc, _ = await run_once(settings, engine)
            assert isinstance(exc, EndpointDown)
            await assert_all_pending_unspent(engine, queued)


async def test_a_run_of_5xx_across_ids_trips_and_gives_attempts_back(
    db_url: str, make_settings: Any, hostile: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(breaker, "STREAK_5XX_MIN_S", 0.5)
    server = await hostile(lambda request: web.json_response({"error": {"message": "down"}}, status=503))
    queued = ids(30)
    settings = make_settings(db_url, server.base_url, max_attempts=50, backoff_base=0.05, backoff_cap=0.1)
    async with open_database(db_url) as engine:
        await QueueStore(engine).enqueue(queued)
        exc, _ = await run_once(settings, engine)
        assert isinstance(exc, EndpointDown)
        assert "server errors" in str(exc)
        rows = await states(engine)
        assert {row[0] for row in rows.values()} == {"pending"}
        # Attempts spent by the 5xx run are given back: at most the retries that started
        # before the streak began (none here) may stay spent.
        spent = {rid: row[1] for rid, row in rows.items() if row[1] > 0}
        assert not spent, f"attempts not given back: {list(spent.items())[:5]}"


async def test_a_short_5xx_burst_is_retried_not_tripped(db_url: str, make_settings: Any) -> None:
    # Every ID fails 3 times with 503, then succeeds: a busy provider, not a dead one.
    queued = [f"resp_flaky3_{uuid.uuid4().hex[:6]}{i:03d}" for i in range(40)]
    async with await start_mock_server(MockConfig()) as mock:
        settings = make_settings(db_url, mock.base_url)
        async with open_database(db_url) as engine:
            await QueueStore(engine).enqueue(queued)
            summary = await Worker(settings, engine, once=True).run()
            assert summary.stop_reason is None
            rows = await states(engine)
            assert {row[0] for row in rows.values()} == {"archived"}


async def test_401_on_one_id_while_the_key_works_is_a_per_id_failure(
    db_url: str, make_settings: Any, hostile: Any
) -> None:
    bad = "resp_denied_one"
    good = ids(25)

    def answer(request: web.Request) -> web.Response:
        rid = request.match_info["tail"].rsplit("/", 1)[-1]
        if rid == bad:
            return web.json_response(
                {"error": {"message": "Unauthorized", "code": "invalid_api_key"}}, status=401
            )
        return web.Response(body=body_for(rid), content_type="application/json")

    server = await hostile(answer)
    settings = make_settings(db_url, server.base_url, max_attempts=3)
    async with open_database(db_url) as engine:
        await QueueStore(engine).enqueue([bad, *good])
        async with engine.begin() as conn:  # the bad ID is due first (same-millisecond ties go by ID)
            await conn.execute(
                text("UPDATE archive_queue SET next_attempt_at = next_attempt_at - 1 WHERE id = :id"),
                {"id": bad},
            )
        # Twice, like a daemon restarted by systemd: the bad ID must not wedge either run.
        for _ in range(2):
            exc, _ = await run_once(settings, engine)
            assert exc is None
        rows = await states(engine)
        assert all(rows[rid][0] == "archived" for rid in good)
        assert rows[bad][0] == "failed"
        assert rows[bad][1] == 3
        assert "refused for this ID only" in (rows[bad][2] or "")


async def test_a_key_refused_on_every_id_stops_with_exit_3(db_url: str, make_settings: Any) -> None:
    queued = ids(20)
    async with await start_mock_server(MockConfig(api_key="right-key-123456")) as mock:
        settings = make_settings(db_url, mock.base_url, api_key="wrong-key-987654")
        async with open_database(db_url) as engine:
            await QueueStore(engine).enqueue(queued)
            exc, _ = await run_once(settings, engine)
            assert isinstance(exc, StopRun)
            assert exc.exit_code == 3
            await assert_all_pending_unspent(engine, queued)


async def test_ids_inserted_unvalidated_are_failed_and_never_sent(
    db_url: str, make_settings: Any, hostile: Any
) -> None:
    server = await hostile(lambda request: web.Response(body=b"{}", content_type="application/json"))
    settings = make_settings(db_url, server.base_url)
    bad = ["..", ".", "", "a/b", "resp_\u00e9", "resp?x=1", "%2e%2e"]
    if db_url.startswith("sqlite"):
        bad.append("x" * 300)  # PostgreSQL's varchar(256) refuses it at the INSERT already
    async with open_database(db_url) as engine:
        async with engine.begin() as conn:
            for rid in bad:
                await conn.execute(text("INSERT INTO archive_queue (id) VALUES (:id)"), {"id": rid})
        exc, _ = await run_once(settings, engine)
        assert exc is None
        rows = await states(engine)
        for rid in bad:
            state, _, error = rows[rid]
            assert state == "failed", (rid, rows[rid])
            assert (error or "").startswith("not a valid response ID"), (rid, error)
    assert server.seen == [], f"invalid IDs reached the server: {server.seen}"


async def test_daemon_pauses_reports_unhealthy_and_resumes_by_itself(
    db_url: str, make_settings: Any, hostile: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(breaker, "PAUSE_FIRST_S", 0.3)
    monkeypatch.setattr(breaker, "PAUSE_MAX_S", 0.6)
    broken = {"on": True}

    def answer(request: web.Request) -> web.Response:
        if broken["on"]:
            return web.Response(status=404, text="404: Not Found")
        rid = request.match_info["tail"].rsplit("/", 1)[-1]
        return web.Response(body=body_for(rid), content_type="application/json")

    server = await hostile(answer)
    queued = ids(30)
    settings = make_settings(db_url, server.base_url)
    async with open_database(db_url) as engine:
        await QueueStore(engine).enqueue(queued)
        worker = Worker(settings, engine, once=False)
        task = asyncio.create_task(worker.run())
        deadline = time.monotonic() + 10
        while worker.breaker.trips == 0:
            assert time.monotonic() < deadline, "the breaker never tripped"
            await asyncio.sleep(0.02)
        assert not worker.is_healthy()
        assert worker.is_live()  # paused, not wedged: the systemd watchdog must not kill it
        assert "archiver_endpoint_up 0.0" in worker.metrics.render().decode()
        problems = await wait_for_problems(engine)  # what `archiver check` prints
        assert len(problems) == 1 and "plain 404" in problems[0], problems
        await asyncio.sleep(1.0)  # several probes while still broken
        rows = await states(engine)
        assert all(row[0] in ("pending", "in_flight") and row[1] <= 1 for row in rows.values()), rows
        assert worker.breaker.trips >= 2
        broken["on"] = False
        while not all(row[0] == "archived" for row in (await states(engine)).values()):
            assert time.monotonic() < deadline + 10, "the daemon did not resume"
            await asyncio.sleep(0.05)
        assert worker.is_healthy()
        assert "archiver_endpoint_up 1.0" in worker.metrics.render().decode()
        deadline = time.monotonic() + 5
        while await worker_problems(engine):
            assert time.monotonic() < deadline, "the worker still reports itself paused"
            await asyncio.sleep(0.05)
        worker.request_stop("test over")
        await task


async def test_daemon_with_a_refused_key_pauses_instead_of_exiting(
    db_url: str, make_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(breaker, "PAUSE_FIRST_S", 0.2)
    queued = ids(10)
    async with await start_mock_server(MockConfig(api_key="right-key-123456")) as mock:
        settings = make_settings(db_url, mock.base_url, api_key="wrong-key-987654")
        async with open_database(db_url) as engine:
            await QueueStore(engine).enqueue(queued)
            worker = Worker(settings, engine, once=False)
            task = asyncio.create_task(worker.run())
            deadline = time.monotonic() + 10
            while worker.breaker.trips < 2:
                assert not task.done(), "the daemon exited on a refused key"
                assert time.monotonic() < deadline, "the breaker never tripped twice"
                await asyncio.sleep(0.02)
            problems = await wait_for_problems(engine)
            assert len(problems) == 1 and "refused" in problems[0], problems
            assert not worker.is_healthy()
            worker.request_stop("test over")
            await task  # a graceful stop: no StopRun from the daemon
            await assert_all_pending_unspent(engine, queued)
            assert await worker_problems(engine) == []  # a clean exit forgets its row


# --- a few bad IDs among good ones are per-ID faults, whatever their shape ----------------


def bad_answer(kind: str) -> web.Response:
    if kind == "redirect":
        return web.Response(status=302, headers={"Location": "https://127.0.0.1:1/elsewhere"})
    if kind == "plain_404":
        return web.Response(status=404, text="404: Not Found")
    if kind == "refused":
        return web.json_response({"error": {"message": "no", "code": "invalid_api_key"}}, status=401)
    return web.json_response({"error": {"message": "boom"}}, status=500)


@pytest.mark.parametrize("kind", ["redirect", "plain_404", "refused", "5xx"])
@pytest.mark.parametrize("bad_first", [True, False])
async def test_a_few_bad_ids_among_good_ones_end_failed_and_never_stall_the_queue(
    db_url: str, make_settings: Any, hostile: Any, monkeypatch: pytest.MonkeyPatch, kind: str, bad_first: bool
) -> None:
    monkeypatch.setattr(breaker, "STREAK_5XX_MIN_S", 0.2)
    bad = ids(5 if kind == "5xx" else 3, prefix="resp_bad")
    good = ids(40)

    def answer(request: web.Request) -> web.Response:
        rid = request.match_info["tail"].rsplit("/", 1)[-1]
        if rid in bad:
            return bad_answer(kind)
        return web.Response(body=body_for(rid), content_type="application/json")

    server = await hostile(answer)
    settings = make_settings(db_url, server.base_url, max_attempts=3)
    async with open_database(db_url) as engine:
        queue = QueueStore(engine)
        for batch in [bad, good] if bad_first else [good, bad]:
            await queue.enqueue(batch)
        for _ in range(3):  # like a backfill run again after each stop: it must converge
            exc, _ = await run_once(settings, engine)
            if exc is None:
                break
        assert exc is None, f"the run stopped on per-ID faults: {exc}"
        rows = await states(engine)
    assert all(rows[rid][0] == "archived" for rid in good)
    assert {rows[rid][0] for rid in bad} == {"failed"}, {rid: rows[rid] for rid in bad}
    assert all(rows[rid][1] == 3 for rid in bad)
    probes = [p for p in server.seen if "archiver_probe" in p]
    assert probes, "the endpoint was not probed before the bad IDs were called per-ID"


async def test_an_outage_shorter_than_the_5xx_rule_fails_no_id(
    db_url: str, make_settings: Any, hostile: Any
) -> None:
    # Backoffs that add up to well under STREAK_5XX_MIN_S: IDs reach their last attempt
    # while the provider is still down. That last 5xx is held, the probe fails, it trips.
    server = await hostile(lambda request: web.json_response({"error": {"message": "down"}}, status=503))
    queued = ids(12)
    settings = make_settings(db_url, server.base_url, max_attempts=3)
    async with open_database(db_url) as engine:
        await QueueStore(engine).enqueue(queued)
        exc, elapsed = await run_once(settings, engine)
        assert isinstance(exc, EndpointDown)
        assert elapsed < breaker.STREAK_5XX_MIN_S
        await assert_all_pending_unspent(engine, queued)


async def test_a_proxy_without_its_backend_trips(db_url: str, make_settings: Any) -> None:
    """Connections are accepted and closed at once, before any answer."""

    async def close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(close_at_once, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    queued = ids(20)
    settings = make_settings(db_url, f"http://127.0.0.1:{port}/v1", max_attempts=8)
    try:
        async with open_database(db_url) as engine:
            await QueueStore(engine).enqueue(queued)
            exc, _ = await run_once(settings, engine)
            assert isinstance(exc, EndpointDown)
            assert "cannot connect" in str(exc)
            await assert_all_pending_unspent(engine, queued)
    finally:
        server.close()
        await server.wait_closed()


async def test_daemon_fetches_new_ids_behind_bad_ones(
    db_url: str, make_settings: Any, hostile: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(breaker, "PAUSE_FIRST_S", 0.2)
    bad = ids(3, prefix="resp_bad")

    def answer(request: web.Request) -> web.Response:
        rid = request.match_info["tail"].rsplit("/", 1)[-1]
        if rid in bad:
            return bad_answer("redirect")
        return web.Response(body=body_for(rid), content_type="application/json")

    server = await hostile(answer)
    settings = make_settings(db_url, server.base_url, max_attempts=3)
    async with open_database(db_url) as engine:
        queue = QueueStore(engine)
        await queue.enqueue(bad)
        worker = Worker(settings, engine, once=False)
        task = asyncio.create_task(worker.run())
        await asyncio.sleep(0.5)
        late = ids(20, prefix="resp_late")
        await queue.enqueue(late)
        deadline = time.monotonic() + 15
        while True:
            rows = await states(engine)
            if all(rows.get(rid, ("",))[0] == "archived" for rid in late) and all(
                rows[rid][0] == "failed" for rid in bad
            ):
                break
            assert time.monotonic() < deadline, f"stalled: {rows}"
            await asyncio.sleep(0.05)
        assert worker.is_healthy()
        worker.request_stop("test over")
        await task


async def _row(engine: AsyncEngine, rid: str) -> tuple[str, int, str | None]:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT state, attempts, lease_token FROM archive_queue WHERE id = :id"), {"id": rid}
            )
        ).one()
    return row[0], row[1], row[2]


async def test_a_5xx_refund_never_touches_a_row_another_worker_now_holds(db_url: str) -> None:
    """Worker A spent attempts on 5xx answers, then lost its leases (stalled past them);
    worker B claimed the rows. A's breaker trips and refunds what its 5xx spent: the
    refund is fenced like every queue update, so B's rows keep their attempts, while a
    row nobody holds (A wrote its retry) gets A's attempts back."""
    taken, free = "resp_fence_taken", "resp_fence_free"
    async with open_database(db_url) as engine:
        queue = QueueStore(engine)
        await queue.enqueue([taken, free])
        a_jobs = await queue.claim_batch("host-a:1", 10, 60, 50)
        assert {j.response_id for j in a_jobs} == {taken, free}
        async with engine.begin() as conn:
            # A's 5xx retries were written (3 attempts spent on each, the rows pending
            # again); then B claimed `taken` (its own attempt counted: 4).
            await conn.execute(
                text(
                    "UPDATE archive_queue SET state = 'pending', attempts = 3, lease_owner = NULL, "
                    "lease_token = NULL, lease_expires_at = NULL, next_attempt_at = updated_at"
                )
            )
        b_jobs = await queue.claim_batch("host-b:2", 1, 60, 50)
        if b_jobs[0].response_id != taken:  # B took the other one: swap the names
            taken, free = free, taken
        before = await _row(engine, taken)
        assert before[0] == "in_flight" and before[1] == 4 and before[2] == b_jobs[0].lease_token

        await queue.refund_attempts({taken: 3, free: 3})  # A's breaker trips

        assert await _row(engine, taken) == before, "A's refund changed a row B holds"
        assert (await _row(engine, free))[:2] == ("pending", 0)


async def test_a_5xx_refund_reaches_a_row_the_worker_holds_again_under_its_own_lease(db_url: str) -> None:
    rid = "resp_fence_own"
    async with open_database(db_url) as engine:
        queue = QueueStore(engine)
        await queue.enqueue([rid])
        job = (await queue.claim_batch("host-a:1", 1, 60, 50))[0]
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE archive_queue SET attempts = 4"))
        assert await queue.refund_attempts({rid: 3}, "host-b:2") == 0
        assert (await _row(engine, rid))[:2] == ("in_flight", 4)
        assert await queue.refund_attempts({rid: 3}) == 0
        assert await queue.refund_attempts({rid: 3}, "host-a:1") == 1
        assert await _row(engine, rid) == ("in_flight", 1, job.lease_token)
