"""Faults made to happen against the in-process Worker and mock API.

429 storms (with and without Retry-After), 5xx storms, connection resets, hangs past the
request timeout, truncated, odd and poison bodies, and a PostgreSQL restart mid-run. Every
test ends with the same promise, checked by :func:`assert_invariant`: each enqueued ID
ends in exactly one known state, archived bodies are the server's bytes, nothing is
duplicated, attempts stay within ``max_attempts`` and nothing is left ``in_flight``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncEngine

from archiver.archived_bodies import read_bodies
from archiver.db import open_database
from archiver.errors import StopRun
from archiver.mockapi import MockConfig, MockStats, body_for, start_mock_server
from archiver.normalize import normalize_body
from archiver.policy import profile_for_base_url
from archiver.queue import QUEUE_STATES, QueueStore
from archiver.schema import CHILD_TABLES
from archiver.settings import Settings
from archiver.worker import RunSummary, Worker

pytestmark = pytest.mark.timeout(120)

ExpectedState = str | Collection[str]
"""One state name, or the states an ID may end in when the test cannot know which."""


# --- the invariant -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueueRow:
    """One ``archive_queue`` row, as the invariant reads it."""

    id: str
    state: str
    attempts: int
    lease_token: str | None
    lease_expires_at: float | None
    last_status_code: int | None
    last_error: str | None
    last_body: bytes | None


async def queue_rows(engine: AsyncEngine) -> dict[str, QueueRow]:
    """Every queue row, by ID."""
    async with engine.connect() as conn:
        result = await conn.execute(
            text(
                "SELECT id, state, attempts, lease_token, lease_expires_at, last_status_code, "
                "last_error, last_body FROM archive_queue"
            )
        )
        rows = [
            QueueRow(r[0], r[1], int(r[2]), r[3], r[4], r[5], r[6], bytes(r[7]) if r[7] else None)
            for r in result.fetchall()
        ]
    by_id = {r.id: r for r in rows}
    assert len(by_id) == len(rows), "archive_queue holds an ID twice"
    return by_id


def _allowed(expected: ExpectedState) -> frozenset[str]:
    return frozenset({expected}) if isinstance(expected, str) else frozenset(expected)


async def assert_invariant(
    engine: AsyncEngine,
    expected: Mapping[str, ExpectedState],
    *,
    requests_by_id: Mapping[str, int],
    max_attempts: int,
    bodies: Mapping[str, bytes] | None = None,
    seed: int = 0,
) -> dict[str, QueueRow]:
    """Check the archiver's promise after a run and return the queue rows.

    - the queue holds exactly the expected IDs, each in an allowed, known state; none is
      ``in_flight`` and no finished row still carries a lease;
    - ``0 <= attempts <= max_attempts`` everywhere;
    - ``responses`` has exactly one row per ``archived`` ID and nothing else, and its
      ``raw`` is the server's bytes: ``bodies[id]`` when given (files served from
      ``bodies_dir``), else ``body_for(id, fetch_number=<requests the mock saw>)``;
    - every child table holds, per archived ID, exactly the rows ``normalize`` makes of
      those bytes: nothing duplicated, nothing missing, nothing for other IDs.

    Args:
        engine: the database the run used.
        expected: ID -> the state it must end in (or the set of allowed states).
        requests_by_id: the mock's per-ID request counter (summed over mocks if several).
        max_attempts: the run's ``max_attempts``.
        bodies: exact bytes for IDs the mock served from files.
        seed: the mock's seed.
    """
    rows = await queue_rows(engine)
    assert set(rows) == set(expected), (
        f"missing {sorted(set(expected) - set(rows))[:5]}, unexpected {sorted(set(rows) - set(expected))[:5]}"
    )
    unknown = {r.state for r in rows.values()} - set(QUEUE_STATES)
    assert not unknown, f"unknown states {unknown}"
    stuck = [rid for rid, r in rows.items() if r.state == "in_flight"]
    assert not stuck, f"{len(stuck)} rows stuck in_flight, e.g. {stuck[:5]}"
    wrong = {
        rid: (rows[rid].state, sorted(_allowed(want)))
        for rid, want in expected.items()
        if rows[rid].state not in _allowed(want)
    }
    assert not wrong, f"{len(wrong)} IDs in the wrong state, e.g. {list(wrong.items())[:5]}"
    leased = [rid for rid, r in rows.items() if r.lease_token or r.lease_expires_at is not None]
    assert not leased, f"rows not in flight still hold a lease: {leased[:5]}"
    over = {rid: r.attempts for rid, r in rows.items() if not 0 <= r.attempts <= max_attempts}
    assert not over, f"attempts outside 0..{max_attempts}: {dict(list(over.items())[:5])}"

    archived = {rid for rid, r in rows.items() if r.state == "archived"}
    async with engine.connect() as conn:
        ids_stored = [r[0] for r in (await conn.execute(text("SELECT id FROM responses"))).fetchall()]
        decoded = await read_bodies(conn, ids_stored)
        stored = [(rid, decoded[rid]) for rid in ids_stored]
        child_counts: dict[str, dict[str, int]] = {}
        for table in CHILD_TABLES:
            result = await conn.execute(
                text(f"SELECT response_id, count(*) FROM {table.name} GROUP BY response_id")
            )
            child_counts[table.name] = {rid: int(n) for rid, n in result.fetchall()}
    stored_ids = [r[0] for r in stored]
    assert len(stored_ids) == len(set(stored_ids)), "responses holds an ID twice"
    assert set(stored_ids) == archived, (
        f"responses without an archived queue row: {sorted(set(stored_ids) - archived)[:5]}; "
        f"archived rows without a response: {sorted(archived - set(stored_ids))[:5]}"
    )

    want_children: dict[str, dict[str, int]] = {table.name: {} for table in CHILD_TABLES}
    for rid, raw in stored:
        raw = bytes(raw)
        if bodies is not None and rid in bodies:
            want = bodies[rid]
        else:
            fetches = requests_by_id.get(rid, 0)
            assert fetches >= 1, f"{rid} is archived but the mock never served it"
            want = body_for(rid, fetch_number=fetches, seed=seed)
        assert raw == want, f"{rid}: archived bytes differ from the server's"
        for name, child_rows in normalize_body(raw).children.items():
            if child_rows:
                want_children[name][rid] = len(child_rows)
    for name, want_counts in want_children.items():
        got = child_counts[name]
        diff = {
            rid: (got.get(rid, 0), want_counts.get(rid, 0))
            for rid in set(got) | set(want_counts)
            if got.get(rid, 0) != want_counts.get(rid, 0)
        }
        assert not diff, f"{name}: (stored, expected) rows differ: {dict(list(diff.items())[:5])}"
    return rows


# --- helpers -----------------------------------------------------------------------------


@dataclass
class RunResult:
    """What :func:`run_and_check` saw."""

    rows: dict[str, QueueRow]
    stats: dict[str, Any]
    summary: RunSummary
    settings: Settings
    elapsed_s: float


def unique_ids(pattern: str, n: int) -> list[str]:
    """``n`` fresh IDs; ``pattern`` holds ``{}`` where a unique suffix goes."""
    tag = uuid.uuid4().hex[:6]
    return [pattern.format(f"{tag}{i:04d}") for i in range(n)]


async def run_and_check(
    db_url: str,
    make_settings: Any,
    expected: Mapping[str, ExpectedState],
    config: MockConfig | None = None,
    *,
    bodies: Mapping[str, bytes] | None = None,
    **changes: Any,
) -> RunResult:
    """Enqueue ``expected``, drain it with one Worker, check the invariant."""
    config = config or MockConfig()
    async with await start_mock_server(config) as mock:
        settings = make_settings(db_url, mock.base_url, **changes)
        async with open_database(db_url) as engine:
            counts = await QueueStore(engine).enqueue(list(expected))
            assert counts.queued == len(expected)
            started = time.monotonic()
            summary = await Worker(settings, engine, once=True).run()
            elapsed = time.monotonic() - started
            assert summary.stop_reason is None
            stats = mock.stats.as_dict()
            rows = await assert_invariant(
                engine,
                expected,
                requests_by_id=stats["requests_by_id"],
                max_attempts=settings.max_attempts,
                bodies=bodies,
                seed=config.seed,
            )
    return RunResult(rows, stats, summary, settings, elapsed)


async def poll_until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Check ``condition`` every few milliseconds until it holds (the mock has no events)."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


async def due_first(engine: AsyncEngine, ids: list[str]) -> None:
    """Make ``ids`` due a second before the rest: rows enqueued in the same millisecond
    are due together, and the queue breaks such ties by ID, not by insertion order."""
    stmt = text("UPDATE archive_queue SET next_attempt_at = next_attempt_at - 1 WHERE id IN :ids").bindparams(
        bindparam("ids", expanding=True)
    )
    async with engine.begin() as conn:
        await conn.execute(stmt, {"ids": ids})


@dataclass
class StatsSampler:
    """Samples the in-process mock's counters every few milliseconds.

    The mock counts a request when it arrives, and it shares the event loop with the
    worker, so the samples show when requests reached the server.
    """

    stats: MockStats
    watch_id: str
    interval_s: float = 0.005
    samples: list[tuple[float, int, int, int]] = field(default_factory=list)
    """(monotonic time, requests_total, 429 answers, requests for ``watch_id``)."""

    async def run(self) -> None:
        while True:
            s = self.stats
            self.samples.append(
                (
                    time.monotonic(),
                    s.requests_total,
                    s.status_counts.get("429", 0),
                    s.requests_by_id.get(self.watch_id, 0),
                )
            )
            await asyncio.sleep(self.interval_s)

    def first_time(self, column: int, at_least: int) -> float:
        """When sample ``column`` (1 total, 2 429s, 3 watched ID) first reached ``at_least``."""
        return next(sample[0] for sample in self.samples if sample[column] >= at_least)

    def total_at(self, when: float) -> int:
        """requests_total in the last sample taken at or before ``when``."""
        return [total for t, total, _, _ in self.samples if t <= when][-1]


async def test_the_invariant_catches_what_it_promises_to(sqlite_url: str, make_settings: Any) -> None:
    """The helper fails on a stuck row, a spent-too-often row, other bytes, a lost child row."""
    rid = unique_ids("resp_kitchensink_{}", 1)[0]  # has rows in every child table
    ids = [rid, *unique_ids("resp_ok_{}", 4)]
    async with await start_mock_server() as mock:
        settings = make_settings(sqlite_url, mock.base_url, max_attempts=3)
        async with open_database(sqlite_url) as engine:
            await QueueStore(engine).enqueue(ids)
            await Worker(settings, engine, once=True).run()
            by_id = mock.stats.as_dict()["requests_by_id"]

            async def check() -> None:
                await assert_invariant(
                    engine, dict.fromkeys(ids, "archived"), requests_by_id=by_id, max_attempts=3
                )

            async def execute(sql: str, **params: Any) -> None:
                async with engine.begin() as conn:
                    await conn.execute(text(sql), params)

            await check()
            breakages = [
                ("UPDATE archive_queue SET state = 'in_flight' WHERE id = :i",
                 "UPDATE archive_queue SET state = 'archived' WHERE id = :i", "stuck in_flight"),
                ("UPDATE archive_queue SET attempts = 4 WHERE id = :i",
                 "UPDATE archive_queue SET attempts = 1 WHERE id = :i", "attempts outside"),
                ("UPDATE responses SET raw = X'7B7D', raw_codec = NULL, raw_dict_id = NULL, "
                 f"raw_sha256 = '{hashlib.sha256(b'{}').hexdigest()}' WHERE id = :i",
                 None, "bytes differ"),
                ("DELETE FROM content_parts WHERE response_id = :i",
                 None, "content_parts"),
            ]  # fmt: skip
            for breaking, repair, message in breakages:
                await execute(breaking, i=rid)
                with pytest.raises(AssertionError, match=message):
                    await check()
                if repair is not None:
                    await execute(repair, i=rid)
                    await check()
                else:
                    # Forget the ID's archive rows and archive it again.
                    for table in CHILD_TABLES:
                        await execute(f"DELETE FROM {table.name} WHERE response_id = :i", i=rid)
                    await execute("DELETE FROM responses WHERE id = :i", i=rid)
                    await execute(
                        "UPDATE archive_queue SET state = 'pending', attempts = 0 WHERE id = :i",
                        i=rid,
                    )
                    await Worker(settings, engine, once=True).run()
                    by_id = mock.stats.as_dict()["requests_by_id"]
                    await check()


# --- 429 -----------------------------------------------------------------------------------


async def test_rate_limit_storm_with_retry_after_archives_everything(db_url: str, make_settings: Any) -> None:
    limited = unique_ids("resp_ratelimit3_{}", 12)
    expected = dict.fromkeys(limited + unique_ids("resp_ok_{}", 30), "archived")
    result = await run_and_check(
        db_url,
        make_settings,
        expected,
        MockConfig(retry_after_s=0.05),
        max_attempts=6,
    )
    assert result.stats["status_counts"]["429"] == 3 * len(limited)
    for rid in limited:
        # Three throttles then the body: each request was one attempt, none more.
        assert result.stats["requests_by_id"][rid] == 4
        assert result.rows[rid].attempts == 4
    assert result.summary.retried == 3 * len(limited)


async def test_quota_429_is_a_billing_stop_on_a_generic_base_url_and_a_throttle_on_dashscope(
    db_url: str, make_settings: Any
) -> None:
    """``insufficient_quota`` without Retry-After: the policy's profile decides.

    On a generic (or OpenAI) base URL it means "no credit left": the run stops, the rows
    stay ``pending`` and no attempt is spent. On DashScope it is a per-minute throttle:
    retried with backoff until archived.
    """
    quota = unique_ids("resp_quota2_{}", 3)
    normal = unique_ids("resp_ok_{}", 40)
    async with await start_mock_server(MockConfig()) as mock:
        settings = make_settings(db_url, mock.base_url, max_attempts=5)
        assert profile_for_base_url(mock.base_url) == settings.profile == "generic"
        async with open_database(db_url) as engine:
            queue = QueueStore(engine)
            await queue.enqueue(quota)
            await queue.enqueue(normal)
            await due_first(engine, quota)  # claimed and fetched first
            with pytest.raises(StopRun) as stopped:
                await Worker(settings, engine, once=True).run()
            assert "billing" in str(stopped.value)
            assert "insufficient_quota" in str(stopped.value)
            stats = mock.stats.as_dict()
            first_run_requests = dict(stats["requests_by_id"])
            assert stats["status_counts"].get("429", 0) >= 1
            expected: dict[str, ExpectedState] = dict.fromkeys(quota, "pending")
            expected.update({rid: {"archived", "pending"} for rid in normal})
            rows = await assert_invariant(
                engine,
                expected,
                requests_by_id=stats["requests_by_id"],
                max_attempts=settings.max_attempts,
            )
            pending = {rid: r for rid, r in rows.items() if r.state == "pending"}
            assert len(pending) >= len(quota)
            assert {r.attempts for r in pending.values()} == {0}, "a billing stop spent attempts"
            assert all(rows[rid].attempts == 1 for rid in rows if rows[rid].state == "archived")

            # The same answers from DashScope are a throttle: retried, then archived.
            dashscope = settings.with_changes(provider="dashscope")
            summary = await Worker(dashscope, engine, once=True).run()
            assert summary.stop_reason is None
            stats = mock.stats.as_dict()
            rows = await assert_invariant(
                engine,
                dict.fromkeys(quota + normal, "archived"),
                requests_by_id=stats["requests_by_id"],
                max_attempts=settings.max_attempts,
            )
            for rid in quota:
                assert stats["requests_by_id"][rid] == 3
                # Run 1's stop refunded its attempt; run 2 spent one per request.
                assert rows[rid].attempts == 3 - first_run_requests.get(rid, 0)


async def test_a_429_pauses_the_whole_pool(sqlite_url: str, make_settings: Any) -> None:
    """One throttled answer stops every fetcher for Retry-After, not just its own task."""
    limited = unique_ids("resp_ratelimit1_{}", 1)[0]
    normal = unique_ids("resp_ok_{}", 160)
    async with await start_mock_server(MockConfig(latency_ms=20, retry_after_s=1.0)) as mock:
        settings = make_settings(sqlite_url, mock.base_url, concurrency=8, max_attempts=4)
        async with open_database(sqlite_url) as engine:
            queue = QueueStore(engine)
            await queue.enqueue([limited])
            await queue.enqueue(normal)
            await due_first(engine, [limited])  # among the first requests
            sampler = StatsSampler(mock.stats, limited)
            sampling = asyncio.create_task(sampler.run())
            try:
                started = time.monotonic()
                await Worker(settings, engine, once=True).run()
                elapsed = time.monotonic() - started
            finally:
                sampling.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await sampling
            stats = mock.stats.as_dict()
            await assert_invariant(
                engine,
                dict.fromkeys([limited, *normal], "archived"),
                requests_by_id=stats["requests_by_id"],
                max_attempts=settings.max_attempts,
            )
    throttled_at = sampler.first_time(2, 1)
    retried_at = sampler.first_time(3, 2)
    # The window starts a little after the 429 (requests already on their way still
    # arrive) and ends a little before Retry-After runs out.
    window = (throttled_at + 0.1, throttled_at + 0.9)
    during = sampler.total_at(window[1]) - sampler.total_at(window[0])
    assert during == 0, f"{during} requests reached the server during the 1 s pause"
    before = sampler.total_at(throttled_at)
    assert before < len(normal) / 2, "the 429 came too late to show a pause"
    assert stats["requests_total"] > sampler.total_at(window[1]), "nothing resumed after the pause"
    assert retried_at - throttled_at >= 0.9
    assert elapsed >= 1.0


async def test_a_stop_during_a_429_pause_sends_nothing_and_spends_no_attempt(
    sqlite_url: str, make_settings: Any
) -> None:
    """Jobs waiting out a throttle were never started: a stop releases them untouched."""
    limited = unique_ids("resp_ratelimit1_{}", 1)[0]
    normal = unique_ids("resp_ok_{}", 40)
    async with await start_mock_server(MockConfig(latency_ms=20, retry_after_s=1.5)) as mock:
        settings = make_settings(sqlite_url, mock.base_url, concurrency=4, max_attempts=4)
        async with open_database(sqlite_url) as engine:
            queue = QueueStore(engine)
            await queue.enqueue([limited])
            await queue.enqueue(normal)
            await due_first(engine, [limited])  # among the first requests
            worker = Worker(settings, engine, once=True)
            running = asyncio.create_task(worker.run())
            await poll_until(lambda: mock.stats.status_counts.get("429", 0) > 0, "a 429")
            await asyncio.sleep(0.3)  # requests already under way finish; the pool waits
            requests_before_stop = mock.stats.requests_total
            worker.request_stop("SIGTERM")
            summary = await asyncio.wait_for(running, 10)
            assert summary.stop_reason == "SIGTERM"
            stats = mock.stats.as_dict()
            expected: dict[str, ExpectedState] = {rid: {"archived", "pending"} for rid in normal}
            expected[limited] = "pending"
            rows = await assert_invariant(
                engine,
                expected,
                requests_by_id=stats["requests_by_id"],
                max_attempts=settings.max_attempts,
            )
            after = stats["requests_total"] - requests_before_stop
            assert after == 0, f"{after} requests sent after the stop, during the 429 pause"
            assert rows[limited].attempts == 1  # its 429 was a real attempt
            spent = [rid for rid in normal if rows[rid].state == "pending" and rows[rid].attempts]
            assert not spent, f"released rows lost an attempt: {spent[:5]}"


# --- 5xx, resets, hangs -------------------------------------------------------------------


async def test_5xx_storm_archives_everything(db_url: str, make_settings: Any) -> None:
    flaky = unique_ids("resp_flaky3_{}", 15)
    expected = dict.fromkeys(flaky + unique_ids("resp_ok_{}", 30), "archived")
    result = await run_and_check(db_url, make_settings, expected, max_attempts=5)
    assert result.stats["status_counts"]["503"] == 3 * len(flaky)
    for rid in flaky:
        assert result.rows[rid].attempts == result.stats["requests_by_id"][rid] == 4


async def test_random_transient_faults_over_300_ids(db_url: str, make_settings: Any) -> None:
    """fail_rate=0.3: 429s (with Retry-After), 500s and 503s mixed over 300 normal IDs."""
    expected = dict.fromkeys(unique_ids("resp_ok_{}", 300), "archived")
    result = await run_and_check(
        db_url,
        make_settings,
        expected,
        MockConfig(fail_rate=0.3, retry_after_s=0.02),
        max_attempts=15,
    )
    counts = result.stats["status_counts"]
    faults = sum(counts.get(code, 0) for code in ("429", "500", "503"))
    assert counts["200"] == 300
    assert faults >= 60, counts  # about 0.3 / 0.7 * 300 = 128
    assert all(counts.get(code, 0) > 0 for code in ("429", "500", "503")), counts
    # Every request was exactly one attempt: no request went uncounted.
    for rid, row in result.rows.items():
        assert row.attempts == result.stats["requests_by_id"][rid], rid


async def test_connection_resets_are_retried(db_url: str, make_settings: Any) -> None:
    reset = unique_ids("resp_reset2_{}", 10)
    expected = dict.fromkeys(reset + unique_ids("resp_ok_{}", 20), "archived")
    result = await run_and_check(db_url, make_settings, expected, max_attempts=5)
    assert result.stats["dropped_total"] == 2 * len(reset)
    for rid in reset:
        # aiohttp may retry a dropped idempotent request once inside one attempt.
        assert 1 <= result.rows[rid].attempts <= result.stats["requests_by_id"][rid] == 3


HANG_S = 20.0


async def test_hangs_past_the_request_timeout_are_retried(db_url: str, make_settings: Any) -> None:
    hung = unique_ids("resp_hang1_{}", 4)
    expected = dict.fromkeys(hung + unique_ids("resp_ok_{}", 20), "archived")
    result = await run_and_check(
        db_url,
        make_settings,
        expected,
        MockConfig(hang_s=HANG_S),
        request_timeout=0.5,
        max_attempts=4,
    )
    for rid in hung:
        assert result.rows[rid].attempts == result.stats["requests_by_id"][rid] == 2
    # Waiting for a hang takes HANG_S; the margin below it is for a loaded machine.
    assert result.elapsed_s < HANG_S - 5, "the run waited for the hang instead of timing out"


# --- bodies -------------------------------------------------------------------------------


async def test_truncated_bodies_retry_then_archive_or_fail_with_bytes_kept(
    db_url: str, make_settings: Any
) -> None:
    healed = unique_ids("resp_trunc2_{}", 6)
    broken = unique_ids("resp_trunc_{}", 4)
    expected: dict[str, ExpectedState] = dict.fromkeys(healed, "archived")
    expected.update(dict.fromkeys(broken, "failed"))
    expected.update(dict.fromkeys(unique_ids("resp_ok_{}", 20), "archived"))
    result = await run_and_check(db_url, make_settings, expected, max_attempts=4)
    for rid in healed:
        assert result.rows[rid].attempts == result.stats["requests_by_id"][rid] == 3
    for rid in broken:
        row = result.rows[rid]
        assert row.attempts == 4 == result.stats["requests_by_id"][rid]
        assert row.last_body == body_for(rid, fetch_number=4), "truncated bytes not kept"
        assert row.last_body is not None and len(row.last_body) > 10
        assert row.last_status_code == 200
        assert row.last_error is not None and "JSON" in row.last_error


def write_bodies(directory: Path, bodies: list[dict[str, Any]]) -> dict[str, bytes]:
    """Write each body to its own file, as the mock's ``bodies_dir`` wants; returns the bytes."""
    directory.mkdir(exist_ok=True)
    written: dict[str, bytes] = {}
    for i, body in enumerate(bodies):
        raw = json.dumps(body).encode()
        (directory / f"{i:03d}.json").write_bytes(raw)
        written[body["id"]] = raw
    return written


async def test_odd_bodies_are_archived_exactly_not_failed(
    db_url: str, make_settings: Any, tmp_path: Path
) -> None:
    """``normalize`` raises only for a non-object or an ``id`` that is not a string, and the
    policy never archives such a body. Everything else, however odd, is archived whole:
    odd values go to ``extra`` or the per-row JSON.
    """
    tag = uuid.uuid4().hex[:6]
    odd: list[dict[str, Any]] = [
        {
            "id": f"resp_oddshape_{tag}1",
            "object": "response",
            "status": "completed",
            "output": "not-a-list",
            "usage": [1, 2],
            "created_at": "yesterday",
            "temperature": "hot",
            "error": 7,
            "x_future": {"nested": [1, {"deeper": None}]},
        },
        {
            "id": f"resp_oddshape_{tag}2",
            "status": "completed",
            "output": [
                1,
                "two",
                None,
                {"type": "message", "content": "not-a-list"},
                {"type": "message", "content": [5, {"type": "output_text", "text": 9, "annotations": "x"}]},
                {"type": "web_search_call", "action": {"sources": [3, "http://a.example"]}},
            ],
        },
        {
            "id": f"resp_oddshape_{tag}3",
            "status": "completed",
            "output": [],
            "metadata": {"k": "nul\u0000inside", "\u0000key": 1},
            "max_output_tokens": 2**70,
            "created_at": 1e300,
        },
    ]
    bodies = write_bodies(tmp_path / "bodies", odd)
    expected = dict.fromkeys(list(bodies) + unique_ids("resp_ok_{}", 10), "archived")
    await run_and_check(
        db_url,
        make_settings,
        expected,
        MockConfig(bodies_dir=tmp_path / "bodies"),
        bodies=bodies,
        max_attempts=3,
    )


async def test_poison_body_fails_only_its_own_id(
    db_url: str, make_settings: Any, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A body the database layer cannot take must not stop the run or hold back the rest.

    JSON nested 300 deep is valid (orjson parses up to 1024 levels) and normalizes fine,
    but the JSON-column serializer (orjson.dumps, limit 254 levels) raises inside the
    writer's INSERT. The ID must end ``archived`` (exact bytes) or ``failed`` with the
    error and the bytes kept; every other ID must be archived.
    """
    nested: Any = "bottom"
    for _ in range(300):
        nested = [nested]
    poison_id = f"resp_poison_{uuid.uuid4().hex[:6]}"
    bodies = write_bodies(
        tmp_path / "bodies",
        [{"id": poison_id, "object": "response", "status": "completed", "output": [],
          "metadata": {"deep": nested}}],
    )  # fmt: skip
    normal = unique_ids("resp_ok_{}", 20)
    expected: dict[str, ExpectedState] = dict.fromkeys(normal, "archived")
    expected[poison_id] = {"archived", "failed"}
    result = await run_and_check(
        db_url,
        make_settings,
        expected,
        MockConfig(bodies_dir=tmp_path / "bodies"),
        bodies=bodies,
        max_attempts=3,
    )
    row = result.rows[poison_id]
    if row.state == "failed":
        assert row.last_body == bodies[poison_id], "the poison bytes were not kept"
        assert row.last_error, "the failure has no error recorded"


# --- the database restarts ----------------------------------------------------------------


@pytest.mark.postgres
async def test_postgres_restart_mid_run_loses_and_duplicates_nothing(
    pg_cluster: Any, pg_url: str, make_settings: Any
) -> None:
    if pg_cluster.external_url:
        pytest.skip("cannot restart an external PostgreSQL server")
    ids = unique_ids("resp_ok_{}", 800)
    restart_now = asyncio.Event()

    def on_progress(summary: RunSummary) -> None:
        if summary.archived >= 100:
            restart_now.set()

    async with await start_mock_server(MockConfig(latency_ms=20)) as mock:
        settings = make_settings(pg_url, mock.base_url, concurrency=8, max_attempts=5)
        async with open_database(pg_url) as engine:
            await QueueStore(engine).enqueue(ids)
            worker = Worker(settings, engine, once=True, on_progress=on_progress)
            running = asyncio.create_task(worker.run())
            await asyncio.wait_for(restart_now.wait(), 30)
            archived_before = worker.summary.archived
            # The session's shared server: restarted (stop + start), never left stopped.
            await asyncio.get_running_loop().run_in_executor(None, pg_cluster.restart)
            assert not running.done(), "the run ended before the server came back"
            summary = await asyncio.wait_for(running, 90)
            assert summary.stop_reason is None
            assert archived_before < len(ids)
            stats = mock.stats.as_dict()
            rows = await assert_invariant(
                engine,
                dict.fromkeys(ids, "archived"),
                requests_by_id=stats["requests_by_id"],
                max_attempts=settings.max_attempts,
            )
    assert summary.archived + summary.unchanged + summary.lost_lease >= len(ids) - archived_before
    assert sum(r.attempts for r in rows.values()) <= stats["requests_total"]


async def test_writer_isolates_a_result_the_database_refuses(db_url: str, make_settings: Any) -> None:
    """One unstorable result in a batch fails that ID alone; the others are written."""
    from datetime import UTC, datetime

    from archiver.normalize import normalize_body
    from archiver.outcomes import Archived
    from archiver.store import ArchiveStore, FetchResult
    from archiver.writer import InlineWriter

    ids = [f"resp_ok_iso{i}" for i in range(3)]
    async with open_database(db_url) as engine:
        queue = QueueStore(engine)
        await queue.enqueue(ids)
        jobs = await queue.claim_batch("tester", 10, lease_seconds=60, max_attempts=5)
        results = []
        for job in sorted(jobs, key=lambda j: j.response_id):
            raw = body_for(job.response_id)
            normalized = normalize_body(raw)
            if job.response_id == "resp_ok_iso1":
                # Neither JSON encoder can store this: the INSERT fails for this row only.
                normalized.response["metadata"] = {"unstorable": object()}
            results.append(
                FetchResult(
                    job, Archived(raw, 200, True, "completed"), datetime.now(UTC), normalized=normalized
                )
            )
        report = await InlineWriter(ArchiveStore(engine)).write(results)
        assert report.archived == 2 and report.failed == 1
        async with engine.connect() as conn:
            states = dict((await conn.execute(text("SELECT id, state FROM archive_queue"))).fetchall())
            failed = (
                await conn.execute(
                    text("SELECT last_error, last_body FROM archive_queue WHERE id = 'resp_ok_iso1'")
                )
            ).one()
            stored = (await conn.execute(text("SELECT count(*) FROM responses"))).scalar()
        assert states == {"resp_ok_iso0": "archived", "resp_ok_iso1": "failed", "resp_ok_iso2": "archived"}
        assert failed[0].startswith("cannot store the response") and bytes(failed[1]) == body_for(
            "resp_ok_iso1"
        )
        assert stored == 2
