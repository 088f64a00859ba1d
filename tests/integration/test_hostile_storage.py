"""Hostile tests of issue 17's storage changes: migration 0014 (partial queue indexes,
SQLite's ``WITHOUT ROWID`` rebuild), the queue gauges' rare ``archived`` recount, and the
short SQLite timestamps.

Each test here reproduces a fault found by hand against real databases.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

import archiver.metrics as metrics_module
from archiver import health
from archiver.db import create_engine, open_database
from archiver.metrics import Metrics, queue_gauge_loop
from archiver.migrate import head_revision, migrate, schema_revision
from archiver.queue import QueueStore
from tests.history import engine_at, revision_before

pytestmark = pytest.mark.timeout(120)


@asynccontextmanager
async def _before_rebuild(url: str) -> AsyncIterator[AsyncEngine]:
    """An archive one migration before 0014's rebuild, with a pending and an archived row."""
    async with engine_at(url, revision_before("partial state indexes")) as engine:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO archive_queue (id, state, next_attempt_at, enqueued_at, updated_at) "
                    "VALUES ('resp_a', 'pending', 1, 1, 1), ('resp_b', 'archived', 1, 1, 1)"
                )
            )
        yield engine


async def test_an_operators_view_on_the_queue_survives_the_sqlite_rebuild(sqlite_url: str) -> None:
    """docs/schema.md invites analysts' own queries; a view over archive_queue (a dashboard's
    per-state counts) made the rebuild's ``ALTER TABLE ... RENAME`` fail ("error in view
    ...: no such table: main.archive_queue"), and since every command migrates first,
    every command of the upgraded archiver then refused the archive."""
    async with _before_rebuild(sqlite_url) as engine:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "CREATE VIEW my_queue_stats AS "
                    "SELECT state, count(*) AS n FROM archive_queue GROUP BY state"
                )
            )
        await migrate(engine)
        assert await schema_revision(engine) == head_revision()
        async with engine.connect() as conn:
            stats = dict((await conn.execute(text("SELECT state, n FROM my_queue_stats"))).fetchall())
        assert stats == {"pending": 1, "archived": 1}
        assert (await QueueStore(engine).counts())["pending"] == 1


async def test_an_operators_trigger_on_the_queue_survives_the_sqlite_rebuild(sqlite_url: str) -> None:
    """``DROP TABLE`` drops the table's triggers with it: an operator's audit trigger on
    archive_queue vanished silently in the rebuild."""
    async with _before_rebuild(sqlite_url) as engine:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE my_failures (id TEXT)"))
            await conn.exec_driver_sql(
                "CREATE TRIGGER my_failed_audit AFTER UPDATE OF state ON archive_queue "
                "WHEN new.state = 'failed' BEGIN INSERT INTO my_failures VALUES (new.id || ':failed'); END"
            )
        await migrate(engine)
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE archive_queue SET state = 'failed' WHERE id = 'resp_a'"))
        async with engine.connect() as conn:
            audited = (await conn.execute(text("SELECT id FROM my_failures"))).scalars().all()
        assert audited == ["resp_a:failed"]


class _SlowArchivedCount(QueueStore):
    """The real queue, whose ``archived`` count takes until ``counted`` is set (a queue of
    hundreds of millions of rows: reading all of it takes longer than a refresh may)."""

    def __init__(self, engine: Any) -> None:
        super().__init__(engine)
        self.counted = asyncio.Event()
        self.archived_counts_started = 0
        self.fail_next = False

    async def counts(self, *, archived: bool = True) -> dict[str, int]:
        if archived:
            self.archived_counts_started += 1
            await self.counted.wait()
            if self.fail_next:
                self.fail_next = False
                raise RuntimeError("database went away")
        return await super().counts(archived=archived)


async def test_a_queue_too_big_to_count_in_one_refresh_still_gets_its_waiting_gauges(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refresh may take max(--metrics-refresh, 10 s). When counting ``archived`` took
    longer, every refresh was cancelled inside that count: the gauges of the states that
    are cheap to count (pending, in_flight, the oldest pending age) were never set, and the
    whole queue was read again at every interval, not "rarely"."""
    monkeypatch.setattr(metrics_module, "_REFRESH_TIMEOUT_FLOOR_S", 0.2)
    engine = create_engine(sqlite_url)
    try:
        await migrate(engine)
        queue = _SlowArchivedCount(engine)
        await queue.enqueue([f"resp_{i}" for i in range(3)])
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE archive_queue SET state = 'archived' WHERE id = 'resp_0'"))
        metrics = Metrics()
        stop = asyncio.Event()
        loop = asyncio.create_task(queue_gauge_loop(metrics, queue, 0.05, stop))
        try:
            await asyncio.sleep(1.0)  # five refresh timeouts
            assert metrics.registry.get_sample_value("archiver_queue_rows", {"state": "pending"}) == 2
            assert queue.archived_counts_started == 1  # one slow count at a time, not one per refresh
            queue.counted.set()
            for _ in range(100):
                if metrics.registry.get_sample_value("archiver_queue_rows", {"state": "archived"}) == 1:
                    break
                await asyncio.sleep(0.05)
            assert metrics.registry.get_sample_value("archiver_queue_rows", {"state": "archived"}) == 1
        finally:
            stop.set()
            await asyncio.wait_for(loop, 5)
    finally:
        await engine.dispose()


async def test_an_archived_count_that_fails_after_its_refresh_gave_up_is_retaken(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The count outlives the refresh that started it; when it then fails (the database
    went away meanwhile) the failure is reported once and a later refresh counts again."""
    monkeypatch.setattr(metrics_module, "_REFRESH_TIMEOUT_FLOOR_S", 0.2)
    engine = create_engine(sqlite_url)
    try:
        await migrate(engine)
        queue = _SlowArchivedCount(engine)
        await queue.enqueue(["resp_a"])
        metrics = Metrics()
        gauges = metrics_module.QueueGauges(queue)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(gauges.refresh(metrics), 0.2)
        queue.fail_next = True
        queue.counted.set()
        with pytest.raises(RuntimeError, match="database went away"):
            await gauges.refresh(metrics)
        await gauges.refresh(metrics)
        assert queue.archived_counts_started == 2
        assert metrics.registry.get_sample_value("archiver_queue_rows", {"state": "pending"}) == 1
        await gauges.close()
    finally:
        await engine.dispose()


def test_the_documented_way_to_compare_sqlite_timestamps_written_both_ways_is_exact() -> None:
    """docs/schema.md names a function to compare SQLite timestamps written with and without
    the zero fraction. ``datetime(col)`` drops every fraction, so ``datetime(archived_at) >
    '... 12:00:07'`` missed a row archived at 12:00:07.9 (archived_at and fetched_at always
    carry microseconds). The documented function must order both spellings and fractions."""
    import re
    import sqlite3
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "schema.md").read_text(encoding="utf-8")
    row = next(line for line in doc.splitlines() if line.startswith("| timestamps |"))
    found = re.search(r"through `(\w+)\(col\)` to compare instants written both ways", row)
    assert found, row
    function = found.group(1)
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (id TEXT, at TEXT)")
    conn.executemany(
        "INSERT INTO t VALUES (?, ?)",
        [
            ("short", "2026-05-01 12:00:07"),
            ("old", "2026-05-01 12:00:07.000000"),
            ("later", "2026-05-01 12:00:07.900000"),
        ],
    )
    at_7 = f"{function}('2026-05-01 12:00:07')"
    after = conn.execute(f"SELECT id FROM t WHERE {function}(at) > {at_7} ORDER BY id").fetchall()
    same = conn.execute(f"SELECT id FROM t WHERE {function}(at) = {at_7} ORDER BY id").fetchall()
    assert after == [("later",)]
    assert same == [("old",), ("short",)]


async def test_a_row_in_a_state_archiver_does_not_know_still_shows_in_the_gauges(db_url: str) -> None:
    """Other applications may insert queue rows (docs/schema.md); one written with a state
    archiver does not know (``queued``) is never claimed, and the metrics were where it
    showed (``Metrics.set_queue``: "a state outside QUEUE_STATES is shown too"). Counting
    each known state from its partial index left it out: it waited unseen for ever."""
    engine = create_engine(db_url)
    try:
        await migrate(engine)
        queue = QueueStore(engine)
        await queue.enqueue(["resp_a"])
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO archive_queue (id, state) VALUES ('resp_typo', 'queued')"))
        metrics = Metrics()
        gauges = metrics_module.QueueGauges(queue)
        await gauges.refresh(metrics)
        assert metrics.registry.get_sample_value("archiver_queue_rows", {"state": "queued"}) == 1
        assert metrics.registry.get_sample_value("archiver_queue_rows", {"state": "pending"}) == 1
        assert sum((await queue.counts()).values()) == 2
        await gauges.close()
    finally:
        await engine.dispose()


WAITING = 20_000


@pytest.mark.postgres
async def test_on_postgresql_a_poll_with_nothing_due_reads_no_waiting_row(pg_url: str) -> None:
    """A claim, the drain check and the health check compared due times with
    ``clock_timestamp()``, which PostgreSQL never uses as an index bound: with nothing due
    (every pending row backed off, every lease alive) each poll read every waiting row of
    the index (20,000 here: "Rows Removed by Filter"; 300,000 took 380 ms a claim). A clock
    the statement reads once (an InitPlan) bounds the index scan."""
    from tests.integration.test_queue_indexes import statements_of

    async with open_database(pg_url) as engine:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO archive_queue (id, state, next_attempt_at, lease_token, lease_expires_at) "
                    "SELECT 'resp_' || i, CASE WHEN i % 2 = 0 THEN 'pending' ELSE 'in_flight' END, "
                    "extract(epoch from now()) + 3600, CASE WHEN i % 2 = 1 THEN 'tok' END, "
                    "CASE WHEN i % 2 = 1 THEN extract(epoch from now()) + 3600 END "
                    f"FROM generate_series(1, {WAITING}) AS i"
                )
            )
            await conn.execute(text("ANALYZE archive_queue"))
        queue = QueueStore(engine)
        polls: dict[str, Any] = {
            "claim": lambda q: q.claim_batch("w:1", 16, 60, 5),
            "claim of a source": lambda q: QueueStore(q.engine).claim_batch("w:1", 16, 60, 5, "default"),
            "due summary": lambda q: q.due_summary(1.0),
            "health check": lambda q: health._queue_problems(q.engine, 3600, 0),
            "expired leases": lambda q: q.expired_leases(),
        }
        problems = []
        for name, call in polls.items():
            for statement, parameters in await statements_of(queue, call):
                async with engine.connect() as conn:  # rolled back: EXPLAIN ANALYZE runs the statement
                    plan = "\n".join(
                        str(row[0])
                        for row in await conn.exec_driver_sql("EXPLAIN ANALYZE " + statement, parameters)
                    )
                removed = [int(n) for n in re.findall(r"Rows Removed by Filter: (\d+)", plan)]
                if any(n >= WAITING // 10 for n in removed):
                    problems.append(f"{name}:\n  {statement}\n{plan}")
        assert not problems, "\n\n".join(problems)
