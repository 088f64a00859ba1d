"""End to end through the real pipeline: real HTTP to the mock API, real SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import orjson
import pytest
from sqlalchemy import text

from archiver.archived_bodies import read_bodies
from archiver.db import open_database
from archiver.mockapi import MockConfig, body_for, start_mock_server
from archiver.queue import QueueStore
from archiver.store import ArchiveStore
from archiver.worker import Worker

pytestmark = pytest.mark.timeout(180)

EXPECTED_STATE = {
    "resp_ok_{}": "archived",
    "resp_kitchensink_{}": "archived",
    "resp_notfound_{}": "not_found",
    "resp_notfound1_{}": "archived",
    "resp_flaky2_{}": "archived",
    "resp_trunc_{}": "failed",
    "resp_trunc1_{}": "archived",
    "resp_pending3_{}": "archived",
    "resp_unicode_{}": "archived",
    "resp_big_{}": "archived",
    "resp_nul_{}": "archived",
    "resp_mismatch_{}": "failed",
    "resp_garbage_{}": "failed",
    "resp_ratelimit1_{}": "archived",
    "resp_badrequest_{}": "failed",
    "resp_reset1_{}": "archived",
    "resp_hang1_{}": "archived",
    "{}-4b2e-9c1d-7f3a2b1c0d9e": "archived",  # DeepSeek-style bare UUID
    "gen-1784286312-{}": "archived",  # OpenRouter
    "resp_{}_us-east-1": "archived",  # xAI-style suffix
    "resp:{}.v2": "archived",  # ':' and '.' must be URL-quoted
}


def mixed_ids(copies: int) -> dict[str, str]:
    ids: dict[str, str] = {}
    for i in range(copies):
        for pattern, state in EXPECTED_STATE.items():
            ids[pattern.format(f"{i:04d}x")] = state
    for i in range(copies * 10):
        ids[f"resp_ok_bulk{i:05d}"] = "archived"
    return ids


async def fetch_all(engine: Any, sql: str, **params: Any) -> list[Any]:
    async with engine.connect() as conn:
        return list((await conn.execute(text(sql), params)).fetchall())


@pytest.mark.parametrize("writer", ["process", "inline"])
async def test_mixed_run_ends_every_id_in_one_known_state(
    db_url: str, make_settings: Any, writer: str
) -> None:
    ids = mixed_ids(copies=3)
    config = MockConfig(latency_ms=15, jitter_ms=5, hang_s=3.0)
    async with await start_mock_server(config) as mock:
        settings = make_settings(
            db_url, mock.base_url, concurrency=8, max_attempts=4, request_timeout=1.0, writer=writer
        )
        async with open_database(db_url) as engine:
            counts = await QueueStore(engine).enqueue(list(ids))
            assert counts.queued == len(ids)
            summary = await Worker(settings, engine, once=True).run()
            assert summary.stop_reason is None

            # 1. Every ID ends in exactly one, expected, terminal state.
            rows = await fetch_all(engine, "SELECT id, state, last_error FROM archive_queue")
            states = {r[0]: r[1] for r in rows}
            assert len(rows) == len(ids)
            wrong = {rid: (states[rid], want) for rid, want in ids.items() if states[rid] != want}
            assert not wrong, wrong

            # 2. show returns exactly what the server sent (last 200 body per ID).
            stats = mock.stats.as_dict()
            store = ArchiveStore(engine)
            for rid, state in ids.items():
                raw = await store.raw_body(rid)
                if state != "archived":
                    assert raw is None, rid
                    continue
                assert raw is not None, rid
                fetches = stats["requests_by_id"][rid]
                assert raw == body_for(rid, fetch_number=fetches), rid
                assert orjson.loads(raw)["id"] == rid

            # 3. Normalized row counts match the bodies.
            items = dict(
                await fetch_all(engine, "SELECT response_id, count(*) FROM output_items GROUP BY response_id")
            )
            parts = dict(
                await fetch_all(
                    engine, "SELECT response_id, count(*) FROM content_parts GROUP BY response_id"
                )
            )
            archived_ids = [rid for rid, s in ids.items() if s == "archived"]
            for rid in archived_ids:
                body = orjson.loads(body_for(rid, fetch_number=stats["requests_by_id"][rid]))
                assert items.get(rid, 0) == len(body["output"]), rid
                want_parts = sum(
                    len(it.get("content") or [])
                    for it in body["output"]
                    if isinstance(it.get("content"), list)
                )
                assert parts.get(rid, 0) == want_parts, rid
            (n_responses,) = (await fetch_all(engine, "SELECT count(*) FROM responses"))[0]
            assert n_responses == len(archived_ids)

            # 4. Bad bodies are kept for forensics on the failed row.
            trunc = "resp_trunc_0000x"
            body = (
                await fetch_all(
                    engine, "SELECT last_body, last_error FROM archive_queue WHERE id = :i", i=trunc
                )
            )[0]
            assert bytes(body[0]) == body_for(trunc), "truncated bytes kept"
            assert "JSON" in body[1]

            # 5. The concurrency bound held, and concurrency really happened.
            assert 2 <= stats["max_in_flight"] <= settings.concurrency

            # 6. Attempts stay within bounds.
            (max_attempts,) = (await fetch_all(engine, "SELECT max(attempts) FROM archive_queue"))[0]
            assert max_attempts <= settings.max_attempts

            # 7. A second run fetches nothing that is already archived.
            mock.stats.reset()
            again = await QueueStore(engine).enqueue(list(ids))
            assert again.queued == 0 and again.already_known == len(ids)
            await Worker(settings, engine, once=True).run()
            assert mock.stats.as_dict()["requests_total"] == 0


async def test_rearchiving_replaces_rows_without_duplicates(db_url: str, make_settings: Any) -> None:
    rid = "resp_kitchensink_rearchive"
    async with await start_mock_server() as mock:
        settings = make_settings(db_url, mock.base_url)
        async with open_database(db_url) as engine:
            queue = QueueStore(engine)
            await queue.enqueue([rid])
            await Worker(settings, engine, once=True).run()
            before = await _child_counts(engine, rid)
            (archived_at,) = (
                await fetch_all(engine, "SELECT archived_at FROM responses WHERE id = :i", i=rid)
            )[0]
            # Ask for it again: same bytes, so rows are untouched but fetched_at moves.
            counts = await queue.enqueue([rid], refetch=True)
            assert counts.requeued == 1
            await Worker(settings, engine, once=True).run()
            after = await _child_counts(engine, rid)
            assert before == after and sum(before.values()) > 5
            (again_at,) = (await fetch_all(engine, "SELECT archived_at FROM responses WHERE id = :i", i=rid))[
                0
            ]
            assert again_at == archived_at
            assert mock.stats.as_dict()["requests_by_id"][rid] == 2


async def _child_counts(engine: Any, rid: str) -> dict[str, int]:
    from archiver.schema import CHILD_TABLES

    counts: dict[str, int] = {}
    async with engine.connect() as conn:
        for table in CHILD_TABLES:
            n = (
                await conn.execute(
                    text(f"SELECT count(*) FROM {table.name} WHERE response_id = :i"), {"i": rid}
                )
            ).scalar()
            counts[table.name] = int(n or 0)
    return counts


async def test_wrong_key_stops_the_run_and_spends_no_attempt(db_url: str, make_settings: Any) -> None:
    from archiver.errors import StopRun

    ids = [f"resp_ok_key{i}" for i in range(20)]
    async with await start_mock_server(MockConfig(api_key="sk-right-key-123456")) as mock:
        settings = make_settings(db_url, mock.base_url, api_key="sk-wrong-key-999999")
        async with open_database(db_url) as engine:
            await QueueStore(engine).enqueue(ids)
            with pytest.raises(StopRun) as err:
                await Worker(settings, engine, once=True).run()
            assert "sk-wrong-key-999999" not in str(err.value)
            assert "API key" in str(err.value)
            rows = await fetch_all(engine, "SELECT state, attempts FROM archive_queue")
            assert {r[0] for r in rows} == {"pending"}
            assert {r[1] for r in rows} == {0}
            # With the right key the same rows archive.
            good = settings.with_changes(api_key="sk-right-key-123456")
            await Worker(good, engine, once=True).run()
            rows = await fetch_all(engine, "SELECT state FROM archive_queue")
            assert {r[0] for r in rows} == {"archived"}


@pytest.mark.parametrize("write_thread", [False, True], ids=["event-loop", "write-thread"])
async def test_lost_lease_cannot_overwrite_newer_work(db_url: str, write_thread: bool) -> None:
    """A result written under a stale lease token is dropped (fenced), on either write path."""
    from datetime import UTC, datetime

    from archiver.outcomes import Permanent
    from archiver.store import FetchResult

    rid = f"resp_ok_{uuid.uuid4().hex[:8]}"
    async with open_database(db_url) as engine:
        queue = QueueStore(engine)
        await queue.enqueue([rid])
        (stale,) = await queue.claim_batch("worker-a", 10, lease_seconds=0.01, max_attempts=5)
        import asyncio

        await asyncio.sleep(0.05)
        (fresh,) = await queue.claim_batch("worker-b", 10, lease_seconds=60, max_attempts=5)
        assert fresh.lease_token != stale.lease_token and fresh.attempt == 1  # the expiry gave it back
        store = ArchiveStore(engine, write_thread=write_thread)
        try:
            report = await store.write_batch(
                [FetchResult(stale, Permanent("failed", "stale worker"), datetime.now(UTC))]
            )
        finally:
            store.close()
        assert report.lost_lease == 1
        rows = await fetch_all(engine, "SELECT state, lease_token FROM archive_queue WHERE id = :i", i=rid)
        assert rows == [("in_flight", fresh.lease_token)]


async def test_run_once_finishes_rows_a_dead_worker_left_in_flight(db_url: str, make_settings: Any) -> None:
    """`run --once` is not drained while another (dead) worker's rows are in flight."""
    ids = [f"resp_ok_dead{i}" for i in range(5)]
    async with await start_mock_server() as mock:
        settings = make_settings(db_url, mock.base_url)
        async with open_database(db_url) as engine:
            queue = QueueStore(engine)
            await queue.enqueue(ids)
            claimed = await queue.claim_batch("dead-worker", 10, lease_seconds=0.5, max_attempts=8)
            assert len(claimed) == 5
            summary = await Worker(settings, engine, once=True).run()
            assert summary.archived == 5
            rows = await fetch_all(engine, "SELECT state, attempts FROM archive_queue")
            assert rows == [("archived", 1)] * 5  # the dead worker's attempts were given back


async def test_run_once_is_not_drained_by_a_query_that_raced_a_write(db_url: str, make_settings: Any) -> None:
    """A write that lands while the drain check queries must not end the run early.

    The young 404 becomes ``pending`` (re-check in 0.05 s) while the first drain query
    runs; that query is made to answer late, after the write, as a slow database would.
    Found as a rare failure of test_expiry.py's young-404 test.
    """
    async with await start_mock_server(MockConfig(latency_ms=100)) as mock:
        settings = make_settings(db_url, mock.base_url, not_found_recheck=0.05)
        async with open_database(db_url) as engine:
            await QueueStore(engine).enqueue(["resp_notfound_young"])
            worker = Worker(settings, engine, once=True)
            real_due_summary = worker.queue.due_summary
            stale = []

            async def due_summary_answering_late(
                horizon_s: float, source: str | None = None
            ) -> tuple[int, float | None]:
                answer = await real_due_summary(horizon_s, source)
                if not stale:  # the first query: answer after the write has landed
                    stale.append(answer)
                    while worker._held:  # the writer sets _slot_freed after each batch
                        worker._slot_freed.clear()
                        await asyncio.wait_for(worker._slot_freed.wait(), 10)
                return answer

            worker.queue.due_summary = due_summary_answering_late  # type: ignore[method-assign]
            summary = await worker.run()
            rows = await fetch_all(engine, "SELECT state FROM archive_queue")
    assert stale == [(0, None)], "the first drain query ran while the row was in flight"
    assert rows == [("not_found",)]
    assert summary.not_found == 1
    assert mock.stats.as_dict()["requests_by_id"]["resp_notfound_young"] == 2


@pytest.mark.parametrize("budget_mb", [8.0, 1024.0])
async def test_large_bodies_wait_for_the_writer_within_the_byte_budget(
    db_url: str, make_settings: Any, budget_mb: float
) -> None:
    """--max-held-mb bounds the bodies fetched and not yet written; batches close early.

    ``big`` bodies are ~4 MB each. The writer takes longer per body than the fetch, so
    without a budget (1024 MB here) the fetched bodies pile up; with 8 MB, no request
    starts while 8 MB wait, so the peak stays within 8 MB plus 4 requests in flight.
    """
    ids = [f"resp_big_{i:02d}" for i in range(24)]
    async with await start_mock_server() as mock:
        # A generous request timeout: on a loaded machine a read waiting for the budget must not
        # time out and fetch a body twice (the count of requests below is exact).
        settings = make_settings(
            db_url, mock.base_url, concurrency=4, max_held_mb=budget_mb, request_timeout=60.0
        )
        async with open_database(db_url) as engine:
            await QueueStore(engine).enqueue(ids)
            summary = await Worker(settings, engine, once=True).run()
            async with engine.connect() as conn:
                rows = await read_bodies(conn, ids)
    assert summary.archived == 24 and rows == {i: body_for(i) for i in ids}
    body = max(len(raw) for raw in rows.values())
    assert body > 4_000_000
    assert mock.stats.requests_total == 24
    peak_mb = summary.peak_held_bytes / (1 << 20)
    if budget_mb == 8.0:
        assert peak_mb <= 8.0 + 4 * body / (1 << 20), peak_mb
        # a batch closes once it holds budget / 8 = 1 MB: one big body per batch
        assert summary.batches == 24
    else:
        assert peak_mb > 8.0 + 4 * body / (1 << 20), "the writer kept up: the test shows nothing"


async def test_change_seq_moves_only_when_content_changes(db_url: str, make_settings: Any) -> None:
    from archiver.schema import CHILD_TABLES

    async with await start_mock_server() as mock:
        settings = make_settings(db_url, mock.base_url)
        async with open_database(db_url) as engine:
            queue = QueueStore(engine)
            await queue.enqueue(["resp_kitchensink_cs", "resp_ok_cs"])
            await Worker(settings, engine, once=True).run()
            first = dict(await fetch_all(engine, "SELECT id, change_seq FROM responses"))
            assert sorted(first.values()) == [1, 2]
            # Identical bytes: no change.
            await queue.enqueue(["resp_kitchensink_cs"], refetch=True)
            await Worker(settings, engine, once=True).run()
            assert dict(await fetch_all(engine, "SELECT id, change_seq FROM responses")) == first
            # A response that changes (queued -> in_progress -> completed) gets a new,
            # higher change_seq each time, and its child rows carry it.
            await queue.enqueue(["resp_pending3_cs"])
            await Worker(settings, engine, once=True).run()
            (seq,) = (
                await fetch_all(engine, "SELECT change_seq FROM responses WHERE id = 'resp_pending3_cs'")
            )[0]
            assert seq >= 5  # three snapshots after 1 and 2, at least (queued, in_progress, completed)
            for table in CHILD_TABLES:
                rows = await fetch_all(
                    engine,
                    f"SELECT DISTINCT change_seq FROM {table.name} WHERE response_id = :i",
                    i="resp_pending3_cs",
                )
                assert rows in ([], [(seq,)]), table.name
            (counter,) = (await fetch_all(engine, "SELECT seq FROM archive_changes"))[0]
            assert counter == seq


async def test_nul_body_is_exact_in_raw_and_scrubbed_only_where_the_database_needs_it(
    db_url: str, make_settings: Any
) -> None:
    rid = "resp_nul_doc"
    async with await start_mock_server() as mock:
        settings = make_settings(db_url, mock.base_url)
        async with open_database(db_url) as engine:
            await QueueStore(engine).enqueue([rid])
            await Worker(settings, engine, once=True).run()
            assert await ArchiveStore(engine).raw_body(rid) == body_for(rid)
            texts = [
                r[0]
                for r in await fetch_all(
                    engine, "SELECT text FROM content_parts WHERE response_id = :i", i=rid
                )
            ]
            joined = "".join(t for t in texts if t)
            if engine.dialect.name == "postgresql":
                assert "\x00" not in joined and "\ufffd" in joined
            else:
                assert "\x00" in joined
