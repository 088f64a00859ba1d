"""Worker self-reports (archive_workers): recorded, refreshed, reported by check and status.

Every test runs on SQLite and on a real PostgreSQL server (``db_url``).
"""

from __future__ import annotations

import re

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from archiver.db import now_sql, open_database
from archiver.health import run_checks
from archiver.queue import QueueStore
from archiver.workers import forget_worker, record_worker, worker_lines, worker_problems

pytestmark = pytest.mark.timeout(60)

BASE = "https://api.example.test/v1"


async def _age(engine: AsyncEngine, owner: str, *, state_s: float = 0.0, updated_s: float = 0.0) -> None:
    """Pretend the state began ``state_s`` and the last refresh was ``updated_s`` seconds ago."""
    now = now_sql(engine.dialect.name)
    async with engine.begin() as conn:
        await conn.execute(
            text(
                f"UPDATE archive_workers SET state_since = {now} - :s, updated_at = {now} - :u "
                "WHERE owner = :owner"
            ),
            {"s": state_s, "u": updated_s, "owner": owner},
        )


async def test_a_paused_and_a_refused_worker_are_problems_an_ok_one_is_not(db_url: str) -> None:
    async with open_database(db_url) as engine:
        await record_worker(engine, "host-a:1", state="ok", detail=None, base_url=BASE)
        assert await worker_problems(engine) == []
        await record_worker(
            engine, "host-b:2", state="paused", detail="5 connection errors in a row", base_url=BASE
        )
        await record_worker(engine, "host-c:3", state="refused", detail="401 invalid key", base_url=None)
        await _age(engine, "host-b:2", state_s=192)

        paused, refused = await worker_problems(engine)
        assert re.fullmatch(
            rf"endpoint {re.escape(BASE)} paused on host-b:2: 5 connection errors in a row "
            r"\(since 3\.[23]min\)",
            paused,
        ), paused
        assert re.fullmatch(
            r"key refused by the endpoint on host-c:3: 401 invalid key \(since \ds\)", refused
        ), refused
        result = await run_checks(db_url)
        assert not result.ok
        assert [p.split(" (since")[0] for p in result.problems] == [
            p.split(" (since")[0] for p in (paused, refused)
        ]


async def test_a_refresh_keeps_since_a_new_state_restarts_it(db_url: str) -> None:
    async with open_database(db_url) as engine:
        await record_worker(engine, "host:1", state="paused", detail="down", base_url=BASE)
        await _age(engine, "host:1", state_s=600, updated_s=30)
        await record_worker(engine, "host:1", state="paused", detail="still down", base_url=BASE)
        (problem,) = await worker_problems(engine)
        assert re.fullmatch(
            rf"endpoint {re.escape(BASE)} paused on host:1: still down \(since 10(\.\d)?min\)", problem
        ), problem

        await record_worker(engine, "host:1", state="refused", detail="403", base_url=BASE)
        (problem,) = await worker_problems(engine)
        assert re.fullmatch(rf"key refused by {re.escape(BASE)} on host:1: 403 \(since \ds\)", problem)

        await record_worker(engine, "host:1", state="ok", detail=None, base_url=BASE)
        assert await worker_problems(engine) == []
        async with engine.connect() as conn:
            count = (await conn.execute(text("SELECT count(*) FROM archive_workers"))).scalar()
        assert count == 1  # one row per owner, upserted


async def test_a_row_not_refreshed_within_max_age_is_a_dead_workers_and_ignored(db_url: str) -> None:
    async with open_database(db_url) as engine:
        await record_worker(engine, "dead:1", state="paused", detail="down", base_url=BASE)
        await _age(engine, "dead:1", state_s=900, updated_s=400)
        assert await worker_problems(engine) == []
        assert len(await worker_problems(engine, max_age_s=500)) == 1
        assert (await run_checks(db_url)).ok
        assert (await QueueStore(engine).status_details())["workers"] == []


async def test_forget_removes_the_row(db_url: str) -> None:
    async with open_database(db_url) as engine:
        await record_worker(engine, "host:1", state="paused", detail="down", base_url=BASE)
        await forget_worker(engine, "host:1")
        await forget_worker(engine, "host:1")  # twice is fine
        assert await worker_problems(engine) == []


async def test_status_lists_workers_that_are_not_ok(db_url: str) -> None:
    async with open_database(db_url) as engine:
        await record_worker(engine, "host-a:1", state="ok", detail=None, base_url=BASE)
        await record_worker(engine, "host-b:2", state="paused", detail="HTTP 404 on /v1", base_url=BASE)
        await _age(engine, "host-b:2", updated_s=12)
        details = await QueueStore(engine).status_details()
    workers = details["workers"]
    assert [(w["owner"], w["state"], w["detail"]) for w in workers] == [
        ("host-b:2", "paused", "HTTP 404 on /v1")
    ]
    assert 11 <= workers[0]["updated_age_s"] < 60
    header, line = worker_lines(details)
    assert header == "workers not fetching:"
    assert re.fullmatch(r"  host-b:2  paused: HTTP 404 on /v1  \(reported 1\ds ago\)", line), line
    assert worker_lines({"workers": []}) == []


async def test_an_unknown_state_is_refused_and_details_are_bounded(db_url: str) -> None:
    async with open_database(db_url) as engine:
        with pytest.raises(ValueError, match="must be one of ok, paused, refused"):
            await record_worker(engine, "host:1", state="sleeping", detail=None, base_url=None)
        await record_worker(engine, "host:1", state="paused", detail="x" * 5000, base_url=None)
        (problem,) = await worker_problems(engine)
    assert problem.startswith("endpoint paused on host:1: xxx")
    assert len(problem) < 600
