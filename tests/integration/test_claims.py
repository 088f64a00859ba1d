"""Claims on real databases: expired leases are swept, and SQLite's write lock is held briefly.

Claims run a statement at a time (see ``archiver.transactions.statement_at_a_time``) and sweep
expired leases at most every ``RECOVER_EVERY_S`` while they come back full, and whenever
they come back short.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncEngine

from archiver import queue as queue_module
from archiver.db import now_sql, open_database
from archiver.health import run_checks
from archiver.queue import QueueStore


async def _expire_lease(engine: AsyncEngine, ids: list[str], *, attempts: int = 1, expiries: int = 0) -> None:
    """Make ``ids`` look leased by a worker that died: in flight, lease expired 10 s ago
    (``expiries`` earlier leases of theirs expired too)."""
    now = now_sql(engine.dialect.name)
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE archive_queue SET state = 'in_flight', "
                "attempts = :attempts, lease_expiries = :expiries, "
                f"lease_owner = 'dead:1', lease_token = 'dead', lease_expires_at = {now} - 10 "
                "WHERE id IN :ids"
            ).bindparams(bindparam("ids", expanding=True)),
            {"ids": ids, "attempts": attempts, "expiries": expiries},
        )


async def _states(engine: AsyncEngine) -> dict[str, tuple[str, int, str | None]]:
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT id, state, attempts, lease_owner FROM archive_queue"))
        return {r[0]: (r[1], r[2], r[3]) for r in rows}


async def test_a_short_claim_takes_an_expired_lease_at_once(db_url: str) -> None:
    async with open_database(db_url) as engine:
        queue = QueueStore(engine)
        await queue.enqueue(["resp_dead", "resp_live"])
        assert [j.response_id for j in await queue.claim_batch("w:1", 1, 60, 5)] != []
        await _expire_lease(engine, ["resp_dead"])
        # The sweep ran a moment ago; the claim comes back short, so it sweeps again.
        claimed = await queue.claim_batch("w:2", 10, 60, 5)
        states = await _states(engine)
    assert "resp_dead" in {j.response_id for j in claimed}
    # The dead worker's attempt was given back; this claim is the row's first real one.
    assert states["resp_dead"] == ("in_flight", 1, "w:2")


async def test_with_a_backlog_expired_leases_are_swept_every_interval(db_url: str) -> None:
    ids = [f"resp_backlog_{i:03d}" for i in range(40)]
    async with open_database(db_url) as engine:
        queue = QueueStore(engine)
        await queue.enqueue(ids)
        await queue.claim_batch("w:1", 5, 60, 5)  # sweeps now
        await _expire_lease(engine, ["resp_backlog_039"])
        await _expire_lease(engine, ["resp_backlog_037"], attempts=5)  # its last attempt
        await _expire_lease(engine, ["resp_backlog_038"], attempts=2, expiries=4)  # its 5th expiry
        full = await queue.claim_batch("w:1", 5, 60, 5)
        before = await _states(engine)
        queue._last_recovery = time.monotonic() - queue_module.RECOVER_EVERY_S  # the interval passed
        await queue.claim_batch("w:1", 5, 60, 5)
        after = await _states(engine)
        async with engine.connect() as conn:
            error = (
                await conn.execute(text("SELECT last_error FROM archive_queue WHERE id = 'resp_backlog_038'"))
            ).scalar()
    assert len(full) == 5
    assert before["resp_backlog_039"] == ("in_flight", 1, "dead:1"), "swept before the interval"
    assert after["resp_backlog_039"][0] == "pending"
    assert after["resp_backlog_039"][1:] == (0, None)  # the attempt given back
    # An expiry never spends an attempt, even the last one; max_attempts expiries fail a row.
    assert after["resp_backlog_037"] == ("pending", 4, None)
    assert after["resp_backlog_038"] == ("failed", 1, None)
    assert error == "lease expired 5 times (each worker holding this ID died, hung or could not write)"


async def test_sqlite_reads_and_start_up_do_not_wait_for_another_processes_write(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    async with open_database(url) as engine:
        queue = QueueStore(engine)
        await queue.enqueue(["resp_a", "resp_b"])
        other = sqlite3.connect(tmp_path / "q.db", isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # another process mid-write (a writer, a claim)
            other.execute("UPDATE archive_queue SET attempts = 3 WHERE id = 'resp_a'")
            counts = await asyncio.wait_for(queue.counts(), 5)
            due, _ = await asyncio.wait_for(queue.due_summary(60), 5)
            details = await asyncio.wait_for(queue.status_details(), 5)
            check = await asyncio.wait_for(run_checks(url), 5)

            async def open_another() -> None:
                async with open_database(url):  # every command starts by reading the schema revision
                    pass

            await asyncio.wait_for(open_another(), 5)
            # A claim waits for the lock (busy timeout), then succeeds.
            asyncio.get_running_loop().call_later(0.3, other.commit)
            started = time.monotonic()
            claimed = await asyncio.wait_for(queue.claim_batch("w:1", 10, 60, 5), 10)
            waited = time.monotonic() - started
        finally:
            other.close()
        states = await _states(engine)
    assert counts["pending"] == 2
    assert details["states"]["pending"] == 2
    assert check.ok, check.problems
    assert due == 2
    assert sorted(j.response_id for j in claimed) == ["resp_a", "resp_b"]
    assert waited >= 0.25, "the claim did not wait for the other writer"
    assert states["resp_a"] == ("in_flight", 4, "w:1"), "the other writer's update was lost"


async def test_a_claim_hands_out_its_rows_longest_due_first(db_url: str) -> None:
    """Fetchers take a batch in the order the claim returns it: due order, whatever the IDs."""
    due = {"resp_z": 300, "resp_a": 100, "resp_m": 200}
    async with open_database(db_url) as engine:
        queue = QueueStore(engine)
        await queue.enqueue(list(due))
        now = now_sql(engine.dialect.name)
        async with engine.begin() as conn:
            for rid, ago in due.items():
                await conn.execute(
                    text(f"UPDATE archive_queue SET next_attempt_at = {now} - :ago WHERE id = :id"),
                    {"ago": ago, "id": rid},
                )
        jobs = await queue.claim_batch("w:1", 10, 60, 5, "default")
    assert [j.response_id for j in jobs] == ["resp_z", "resp_m", "resp_a"]


async def test_an_enqueued_chunk_keeps_each_ids_created_at_and_source_whatever_its_order(db_url: str) -> None:
    """Chunks are inserted in key order: each ID's creation time and source must follow it."""
    ids = ["resp_c", "resp_a", "resp_d", "resp_b", "resp_a"]
    created = [3000.0, 1000.0, None, 2000.0, 1000.0]
    sources = ["gamma", "alpha", "default", "beta", "alpha"]
    async with open_database(db_url) as engine:
        counts = await QueueStore(engine).enqueue(ids, created_at=created, sources=sources)
        assert (counts.queued, counts.already_known) == (4, 1)
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    text("SELECT id, response_created_at, source FROM archive_queue ORDER BY id")
                )
            ).all()
    assert [tuple(row) for row in rows] == [
        ("resp_a", 1000.0, "alpha"),
        ("resp_b", 2000.0, "beta"),
        ("resp_c", 3000.0, "gamma"),
        ("resp_d", None, "default"),
    ]
