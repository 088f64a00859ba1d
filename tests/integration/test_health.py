"""``archiver check`` on real databases: each problem is made to happen, then detected."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import bindparam, text

from archiver.db import create_engine, now_sql, open_database
from archiver.health import CheckResult, format_duration, run_checks
from archiver.queue import QueueStore


async def _migrated(db_url: str) -> None:
    async with open_database(db_url):
        pass


async def _enqueue_and_age(
    db_url: str, ids: list[str], *, due_ago_s: float = 0.0, lease_expired_ago_s: float | None = None
) -> None:
    """Queue ``ids``; make them due ``due_ago_s`` ago, or leased with a lease that expired."""
    async with open_database(db_url) as engine:
        await QueueStore(engine).enqueue(ids)
        now = now_sql(engine.dialect.name)
        async with engine.begin() as conn:
            if lease_expired_ago_s is None:
                stmt = text(f"UPDATE archive_queue SET next_attempt_at = {now} - :ago WHERE id IN :ids")
                ago = due_ago_s
            else:
                stmt = text(
                    "UPDATE archive_queue SET state = 'in_flight', attempts = 1, lease_owner = 'dead:1', "
                    f"lease_token = 'abc', lease_expires_at = {now} - :ago WHERE id IN :ids"
                )
                ago = lease_expired_ago_s
            await conn.execute(stmt.bindparams(bindparam("ids", expanding=True)), {"ago": ago, "ids": ids})


async def test_healthy_empty_database(db_url: str) -> None:
    await _migrated(db_url)
    assert await run_checks(db_url) == CheckResult(ok=True, problems=[])


async def test_fresh_work_is_healthy(db_url: str) -> None:
    await _enqueue_and_age(db_url, ["resp_a", "resp_b"], due_ago_s=600)  # due 10 min: being worked on
    await _enqueue_and_age(db_url, ["resp_c"], lease_expired_ago_s=10)  # just expired: next claim takes it
    result = await run_checks(db_url)
    assert result.ok, result.problems


async def test_unmigrated_database_is_a_schema_problem(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        async with engine.connect() as conn:  # exists (SQLite file created), but empty
            await conn.execute(text("SELECT 1"))
    finally:
        await engine.dispose()
    result = await run_checks(db_url)
    assert not result.ok
    assert len(result.problems) == 1
    assert "schema" in result.problems[0] and "archiver migrate" in result.problems[0]


async def test_check_does_not_migrate(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        await run_checks(db_url)
        await run_checks(db_url)
        async with engine.connect() as conn:
            tables = await conn.run_sync(lambda c: c.dialect.get_table_names(c))
    finally:
        await engine.dispose()
    assert "archive_queue" not in tables and "alembic_version" not in tables


async def test_old_schema_revision_is_a_schema_problem(db_url: str) -> None:
    await _migrated(db_url)
    engine = create_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE alembic_version SET version_num = 'f00dcafe0001'"))
    finally:
        await engine.dispose()
    result = await run_checks(db_url)
    assert not result.ok
    assert result.problems[0].startswith("schema newer than this archiver: database at f00dcafe0001")


async def test_stale_pending_rows_are_a_stalled_queue(db_url: str) -> None:
    await _enqueue_and_age(db_url, [f"resp_{i}" for i in range(120)], due_ago_s=3.2 * 3600)
    await _enqueue_and_age(db_url, ["resp_recent"], due_ago_s=60)
    result = await run_checks(db_url)
    assert not result.ok
    assert result.problems == [
        "queue stalled: 120 pending rows due for more than 1h (oldest 3.2h); is a worker running?"
    ]
    # The threshold is the caller's: a daily backfill host tolerates more.
    assert (await run_checks(db_url, max_pending_age_s=86400)).ok


async def test_expired_leases_piling_up(db_url: str) -> None:
    await _enqueue_and_age(db_url, ["resp_x", "resp_y", "resp_z"], lease_expired_ago_s=7200)
    result = await run_checks(db_url)
    assert not result.ok
    assert len(result.problems) == 1
    problem = result.problems[0]
    assert problem.startswith("leases piling up: 3 in_flight rows whose lease expired more than 1min ago")
    assert "(oldest 2h)" in problem
    assert (await run_checks(db_url, max_expired_leases=3)).ok
    assert not (await run_checks(db_url, max_expired_leases=2)).ok


async def test_both_queue_problems_are_reported(db_url: str) -> None:
    await _enqueue_and_age(db_url, ["resp_old"], due_ago_s=2 * 86400)
    await _enqueue_and_age(db_url, ["resp_leased"], lease_expired_ago_s=300)
    result = await run_checks(db_url)
    assert [p.split(":")[0] for p in result.problems] == ["queue stalled", "leases piling up"]
    assert "oldest 2d" in result.problems[0]


async def test_unreachable_postgresql_names_the_url_without_password() -> None:
    url = "postgresql://archiver:s3cret-Passw0rd@127.0.0.1:1/archive"
    result = await run_checks(url)
    assert not result.ok
    assert len(result.problems) == 1
    problem = result.problems[0]
    assert problem.startswith("database unreachable: ")
    assert "127.0.0.1:1/archive" in problem and "archiver:***@" in problem
    assert "s3cret" not in problem


async def test_missing_sqlite_file_is_unreachable_and_not_created(tmp_path: Path) -> None:
    path = tmp_path / "absent.db"
    result = await run_checks(f"sqlite:///{path}")
    assert len(result.problems) == 1
    expected = f"database unreachable: no archive at {path}: the file does not exist"
    assert result.problems[0].startswith(expected)
    assert not path.exists()
    result = await run_checks(f"sqlite:///{tmp_path / 'no' / 'dir' / 'x.db'}")
    assert not result.ok and "does not exist" in result.problems[0]


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0, "0s"), (45.4, "45s"), (60, "1min"), (90, "1.5min"), (3600, "1h"), (11520, "3.2h"), (86400, "1d")],
)
def test_format_duration(seconds: float, shown: str) -> None:
    assert format_duration(seconds) == shown
