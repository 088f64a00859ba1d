"""Hostile CLI tests of the code that landed on 2026-12-02: Ctrl-C on PostgreSQL.

Real processes, a real PostgreSQL server (tests/pgserver.py), real signals.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from archiver.db import open_database
from tests.acceptance.test_hostile_operator import TIMEOUT_S, archiver, start_archiver

pytestmark = [pytest.mark.timeout(120), pytest.mark.postgres]

OTHER_SESSIONS = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
)


async def queue_states(engine: Any) -> dict[str, str]:
    async with engine.connect() as conn:
        return dict((await conn.execute(text("SELECT id, state FROM archive_queue"))).all())


async def test_ctrl_c_of_a_retry_waiting_on_a_postgresql_lock_leaves_nothing_that_blocks_the_next(
    pg_url: str, tmp_path: Path
) -> None:
    """``archiver retry`` waits on a table lock another session holds (an operator's psql,
    a long migration): Ctrl-C must exit 130 within seconds, and once the holder lets go,
    its server session must be gone, no transaction left open (``idle in transaction``)
    holding locks: the row is as it was and the same command run again moves it."""
    assert (
        archiver("enqueue", "--database-url", pg_url, cwd=tmp_path, input=b"resp_locked_1\n").returncode == 0
    )
    async with open_database(pg_url) as engine:
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE archive_queue SET state = 'failed' WHERE id = 'resp_locked_1'"))
        async with engine.connect() as holder:
            await holder.execute(text("LOCK TABLE archive_queue IN ACCESS EXCLUSIVE MODE"))
            proc = start_archiver("retry", "--database-url", pg_url, cwd=tmp_path)
            deadline = time.monotonic() + 30
            waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            async with engine.connect() as watcher:
                while not (await watcher.execute(text(waiting))).scalar():
                    assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
                    await watcher.rollback()
                    await asyncio.sleep(0.02)
            sent = time.monotonic()
            proc.send_signal(signal.SIGINT)
            _out, err = proc.communicate(timeout=TIMEOUT_S)
            took = time.monotonic() - sent
            assert proc.returncode == 130, err
            assert took < 15, took
            await holder.rollback()
        await engine.dispose()  # the pool's own sessions too
        async with engine.connect() as conn:
            deadline = time.monotonic() + 10
            while (await conn.execute(text(OTHER_SESSIONS))).scalar():
                rows = (await conn.execute(text("SELECT state, query FROM pg_stat_activity"))).all()
                assert time.monotonic() < deadline, rows
                await conn.rollback()
                await asyncio.sleep(0.05)
        assert await queue_states(engine) == {"resp_locked_1": "failed"}
        again = archiver("retry", "--database-url", pg_url, cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        assert await queue_states(engine) == {"resp_locked_1": "pending"}
