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
from tests.acceptance.conftest import Cli, base_env
from tests.acceptance.test_crash import (
    check_invariant,
    read_queue,
    requests_for,
    run_once,
    stop_for_good,
    wait_for_leases_to_expire,
)
from tests.acceptance.test_hostile_operator import TIMEOUT_S, archiver, start_archiver
from tests.acceptance.test_stop_deadline import (
    BOUND_S,
    GRACE_S,
    SLACK_S,
    mock_500ms,
    mock_now,
    proxied,
    start_daemon,
)
from tests.tcpproxy import TcpProxy

pytestmark = [pytest.mark.timeout(180), pytest.mark.postgres]

__all__ = ["mock_500ms", "mock_now", "proxied"]  # fixtures, used by name

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


@pytest.mark.parametrize("fault", ["refuse", "blackhole"])
def test_postgresql_back_during_the_final_write_loses_nothing(
    fault: str, proxied: tuple[str, TcpProxy], pg_url: str, mock_500ms: str, mock_now: str, tmp_path: Path
) -> None:
    """SIGTERM while PostgreSQL is gone; it comes back after the grace period, while the
    final write still has time. The stop keeps its bound, says nothing it should not,
    and every ID ends archived (now, or by the next run once leases expire) with the
    server's bytes: no body is lost or half-written by a write cut midway."""
    through_proxy, proxy = proxied
    cli = Cli({**base_env(), "ARCHIVER_DATABASE_URL": through_proxy}, tmp_path)
    ids = [f"resp_ok_back_{fault}_{i}" for i in range(40)]
    proc = start_daemon(cli, pg_url, ids, mock_500ms, tmp_path)
    try:
        getattr(proxy, fault)()
        time.sleep(0.2)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        time.sleep(GRACE_S + 0.5)  # inside the final write's time
        proxy.restore()
        returncode = proc.wait(timeout=150)
        took = time.monotonic() - sent
    finally:
        proxy.restore()
        stop_for_good(proc)
    stderr = (tmp_path / "daemon" / "stderr").read_text()
    print(f"the stop took {took:.2f}s, exit {returncode}")
    assert took < BOUND_S + SLACK_S, f"the stop took {took:.1f}s: {stderr[-3000:]}"
    assert "Traceback" not in stderr, stderr[-3000:]
    assert returncode in (0, 1), stderr[-3000:]
    states = {r.state for r in read_queue(pg_url).values()}
    assert states <= {"archived", "pending", "in_flight"}, states
    wait_for_leases_to_expire(pg_url)
    summary = run_once(cli, mock_now, ARCHIVER_LEASE_SECONDS="3")
    assert summary["remaining"].get("pending", 0) == 0, summary
    check_invariant(pg_url, ids, requests_for(ids, mock_500ms, mock_now))
