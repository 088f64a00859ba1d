"""The queue's partial indexes: every hot query is answered from one, and final rows are in none.

The statements are the real ones: each QueueStore method (and the health check) runs
against a queue of 20,000 rows, mostly archived like a grown archive's, while an engine
event records what it sends; then each recorded statement is EXPLAINed, on SQLite before
and after ANALYZE (archiver never runs ANALYZE there, so the planner's default guesses are
what production sees), on PostgreSQL after ANALYZE.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from archiver import health
from archiver.db import open_database
from archiver.queue import (
    ERRORS_INDEX,
    IN_FLIGHT_INDEX,
    PENDING_BY_SOURCE_INDEX,
    PENDING_ENQUEUED_INDEX,
    PENDING_INDEX,
    QueueStore,
    archive_queue,
)

pytestmark = pytest.mark.timeout(120)

ROWS = 20_000
# Per 100 rows: 1 pending, 1 in flight, 2 failed, 1 not_found, 95 archived.
STATE_OF_I = (
    "CASE i % 100 WHEN 0 THEN 'pending' WHEN 1 THEN 'in_flight' WHEN 2 THEN 'failed' "
    "WHEN 3 THEN 'failed' WHEN 4 THEN 'not_found' ELSE 'archived' END"
)
EXPECTED = {"pending": 200, "in_flight": 200, "failed": 400, "not_found": 200, "archived": 19_000}
PARTIAL_INDEXES = {
    PENDING_BY_SOURCE_INDEX: EXPECTED["pending"],
    PENDING_INDEX: EXPECTED["pending"],
    PENDING_ENQUEUED_INDEX: EXPECTED["pending"],
    IN_FLIGHT_INDEX: EXPECTED["in_flight"],
    ERRORS_INDEX: EXPECTED["failed"] + EXPECTED["not_found"],
}


async def fill_queue(engine: AsyncEngine) -> None:
    """ROWS rows in every state, two sources; half the leases expired; failed/not_found with errors."""
    now = time.time()
    async with engine.begin() as conn:
        await conn.execute(
            text(
                f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {ROWS}) "
                "INSERT INTO archive_queue (id, state, attempts, polls, lease_expiries, next_attempt_at, "
                "enqueued_at, updated_at, lease_owner, lease_token, lease_expires_at, last_error, source) "
                f"SELECT 'resp_' || i, {STATE_OF_I}, i % 3, 0, 0, "
                f"{now} + (i % 7) * 100 - 300, {now} - i, {now} - i, "
                "CASE WHEN i % 100 = 1 THEN 'w:1' END, CASE WHEN i % 100 = 1 THEN 'tok' || (i % 4) END, "
                f"CASE WHEN i % 100 = 1 THEN {now} + (i % 2) * 1200 - 600 END, "
                "CASE WHEN i % 100 IN (2, 3, 4) THEN 'boom ' || i END, "
                "CASE WHEN i % 2 = 0 THEN 'default' ELSE 'proj-a' END FROM n"
            )
        )


async def analyze(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("ANALYZE"))


@pytest.fixture
async def queue(db_url: str) -> AsyncIterator[QueueStore]:
    async with open_database(db_url) as engine:
        await fill_queue(engine)
        yield QueueStore(engine)


Call = Callable[[QueueStore], Awaitable[Any]]

HOT_PATHS: dict[str, Call] = {
    # A new QueueStore sweeps expired leases on its first claim.
    "claim of a source, lease recovery": lambda q: QueueStore(q.engine).claim_batch(
        "w:2", 5, 60, 5, "default"
    ),
    "claim of any source": lambda q: q.claim_batch("w:2", 5, 60, 5),
    "heartbeat": lambda q: q.extend_leases(["tok1", "tok3"], 60),
    "due summary of a source": lambda q: q.due_summary(1.0, "proj-a"),
    "due summary": lambda q: q.due_summary(1.0),
    "health check": lambda q: health._queue_problems(q.engine, 3600, 0),
    "oldest pending": lambda q: q.oldest_pending_age(),
    "expired leases": lambda q: q.expired_leases(),
    "counts of the waiting and failed states": lambda q: q.counts(archived=False),
    "waiting rows per source": lambda q: q.waiting_by_source(),
    "expiry counts": lambda q: q.expiry_counts(7 * 86400, source="default"),
    "recent errors": lambda q: q.recent_errors(["failed", "not_found"], 10),
}


async def statements_of(queue: QueueStore, call: Call) -> list[tuple[str, Any]]:
    """The statements on archive_queue that ``call`` sends (with their parameters)."""
    sent: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if "archive_queue" in statement and not many:
            sent.append((statement, parameters))

    event.listen(Engine, "before_cursor_execute", record)
    try:
        await call(queue)
    finally:
        event.remove(Engine, "before_cursor_execute", record)
    assert sent, "the call sent no statement on archive_queue"
    return sent


async def plan_of(engine: AsyncEngine, statement: str, parameters: Any) -> str:
    explain = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN "
    async with engine.connect() as conn:
        rows = (await conn.exec_driver_sql(explain + statement, parameters)).fetchall()
    return "\n".join(str(row[-1]) for row in rows)


def full_scans(plan: str, dialect: str) -> list[str]:
    """The lines of a plan that read the whole queue table."""
    if dialect == "sqlite":
        return [line for line in plan.splitlines() if re.search(r"SCAN archive_queue\s*$", line)]
    return [line for line in plan.splitlines() if "Seq Scan on archive_queue" in line]


async def assert_hot_paths_use_partial_indexes(queue: QueueStore) -> None:
    dialect = queue.engine.dialect.name
    problems = []
    for name, call in HOT_PATHS.items():
        for statement, parameters in await statements_of(queue, call):
            plan = await plan_of(queue.engine, statement, parameters)
            used = [index for index in PARTIAL_INDEXES if index in plan]
            if not used or full_scans(plan, dialect):
                problems.append(f"{name}:\n  {statement}\n  {plan}")
    assert not problems, "\n\n".join(problems)


async def test_every_hot_queue_query_is_answered_from_a_partial_index(queue: QueueStore) -> None:
    if queue.engine.dialect.name == "sqlite":
        await assert_hot_paths_use_partial_indexes(queue)  # no statistics: archiver's own case
    await analyze(queue.engine)
    await assert_hot_paths_use_partial_indexes(queue)


async def test_the_plan_check_sees_a_full_scan(queue: QueueStore) -> None:
    """The check above can fail: a query on a state no partial index holds reads the table."""
    await analyze(queue.engine)
    plan = await plan_of(queue.engine, "SELECT count(*) FROM archive_queue WHERE state = 'archived'", ())
    assert full_scans(plan, queue.engine.dialect.name), plan
    assert not [index for index in PARTIAL_INDEXES if index in plan], plan


async def test_the_indexes_hold_only_the_rows_their_queries_search(queue: QueueStore) -> None:
    assert await queue.counts() == EXPECTED
    engine = queue.engine
    async with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            # Each cell of an index b-tree, interior or leaf, is one entry.
            entries = {
                name: (
                    await conn.execute(text("SELECT sum(ncell) FROM dbstat WHERE name = :n"), {"n": name})
                ).scalar()
                for name in PARTIAL_INDEXES
            }
            assert entries == PARTIAL_INDEXES
            # WITHOUT ROWID: the primary key is the table; no index holds every ID again.
            names = (
                await conn.execute(
                    text("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'archive_queue'")
                )
            ).scalars()
            assert set(names) == set(PARTIAL_INDEXES)
        else:
            # An index of all 20,000 rows takes over 300 KB (the primary key's); one of a few hundred
            # rows, a few pages.
            sizes = {
                name: (
                    await conn.execute(text("SELECT pg_relation_size(CAST(:n AS regclass))"), {"n": name})
                ).scalar()
                for name in PARTIAL_INDEXES
            }
            primary_key = (await conn.execute(text("SELECT pg_relation_size('pk_archive_queue')"))).scalar()
            assert primary_key > 300_000, primary_key
            assert all(size < primary_key / 10 for size in sizes.values()), (sizes, primary_key)


async def test_rows_move_in_and_out_of_the_indexes_with_their_state(queue: QueueStore) -> None:
    """A claimed row leaves the pending indexes; an archived one leaves them all (SQLite counts entries)."""
    jobs = await queue.claim_batch("w:3", 10, 60, 5, "default")
    assert len(jobs) == 10
    async with queue.engine.begin() as conn:
        await conn.execute(
            archive_queue.update()
            .where(archive_queue.c.id.in_([j.response_id for j in jobs]))
            .values(state="archived", lease_owner=None, lease_token=None, lease_expires_at=None)
        )
    counts = await queue.counts()
    assert counts["archived"] == EXPECTED["archived"] + 10
    if queue.engine.dialect.name != "sqlite":
        return
    async with queue.engine.connect() as conn:
        pending_entries = (
            await conn.execute(text("SELECT sum(ncell) FROM dbstat WHERE name = :n"), {"n": PENDING_INDEX})
        ).scalar()
    # Expired leases swept back to pending by the claim are in the pending index again.
    assert pending_entries == counts["pending"]
