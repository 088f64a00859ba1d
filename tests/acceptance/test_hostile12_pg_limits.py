"""Limits a DBA sets on a real PostgreSQL, met by ``archiver run`` (hostile12).

- ``statement_timeout`` / ``lock_timeout``: a write that waits on a lock another session
  holds (a stopped peer, a long rebuild batch, an operator's transaction) is cancelled by
  the server. That says nothing about the responses in the batch: they must be written
  once the lock is free, never ``failed`` as bodies the database refuses.
- ``max_connections`` reached: after a restart the whole fleet reconnects at once, and
  some processes find every slot taken for a moment ("sorry, too many clients
  already"). The run retries, as after any lost connection, instead of stopping with
  rows left in flight.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.acceptance.conftest import Cli, base_env, children_of, spawn_archiver, start_mock_process
from tests.conftest import server_binaries
from tests.pgserver import PgCluster

pytestmark = pytest.mark.postgres


@pytest.fixture
def slow_mock(tmp_path: Path) -> Iterator[str]:
    """The mock API answering each request after 20 ms, so a run lasts a few seconds."""
    yield from start_mock_process(tmp_path, "--latency-ms", "20")


def _database(pg_url: str) -> str:
    return re.sub(r"\?.*", "", pg_url).rsplit("/", 1)[1]


def _states(env: dict[str, str], cwd: Path) -> dict[str, int]:
    done = Cli(env, cwd)("status", "--json")
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout)["states"])


def _assert_archived_byte_exact(env: dict[str, str], cwd: Path, base_url: str, ids: list[str]) -> None:
    for rid in ids:
        with urllib.request.urlopen(f"{base_url}/responses/{rid}") as answer:  # noqa: S310 (loopback mock)
            sent = answer.read()
        shown = Cli(env, cwd)("show", rid)
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout == sent, rid


def _hold_lock(pg_cluster: PgCluster, database: str, sql: str, seconds: float) -> threading.Thread:
    """A session of its own (no timeout) that takes a lock with ``sql`` and keeps it ``seconds``."""
    statement = f"SET statement_timeout = 0; BEGIN; {sql}; SELECT pg_sleep({seconds}); COMMIT;"
    thread = threading.Thread(target=pg_cluster.psql, args=(statement, database), daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("setting", ["statement_timeout", "lock_timeout"])
@pytest.mark.parametrize("writer", ["inline", "process"])
def test_a_write_the_server_cancels_after_a_lock_wait_is_retried_not_failed(
    pg_url: str, pg_cluster: PgCluster, mock_process: str, tmp_path: Path, setting: str, writer: str
) -> None:
    env = {**base_env(), "ARCHIVER_DATABASE_URL": pg_url, "ARCHIVER_BASE_URL": mock_process}
    ids = [f"resp_ok_lock{i}" for i in range(40)]
    queued = Cli(env, tmp_path)("enqueue", input="\n".join(ids).encode())
    assert queued.returncode == 0, queued.stderr
    database = _database(pg_url)
    pg_cluster.psql(f"ALTER DATABASE {database} SET {setting} = '300ms'")
    # Every writer takes the change counter's row lock: held elsewhere for 4 s (past the run's start-up), each
    # write waits, and the server cancels it after 300 ms.
    holder = _hold_lock(pg_cluster, database, "SELECT * FROM archive_changes FOR UPDATE", 4.0)
    time.sleep(0.3)
    run = Cli(env, tmp_path)("run", "--once", "--writer", writer)
    holder.join()
    assert _states(env, tmp_path) == {
        "pending": 0,
        "in_flight": 0,
        "archived": 40,
        "not_found": 0,
        "failed": 0,
    }
    assert run.returncode == 0, run.stderr.decode()[-2000:]
    assert b"cannot store the response" not in run.stderr
    _assert_archived_byte_exact(env, tmp_path, mock_process, ids[:5])


@pytest.fixture
def small_cluster() -> Iterator[PgCluster]:
    """A PostgreSQL server of its own with room for 12 connections (so a test may fill them)."""
    cluster = PgCluster.create(server_binaries(), max_connections=12)
    try:
        yield cluster
    finally:
        cluster.destroy()


class SlotFiller:
    """Takes every free connection slot of a server (until it answers "too many clients")
    and keeps them until :meth:`release`."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.filled = threading.Event()
        self._release = threading.Event()
        self.taken = 0
        self.refusal = ""
        self._thread = threading.Thread(target=asyncio.run, args=(self._fill(),), daemon=True)
        self._thread.start()

    async def _fill(self) -> None:
        conns = []
        try:
            while True:
                try:
                    conns.append(await asyncpg.connect(self.url))
                except asyncpg.TooManyConnectionsError as exc:
                    self.refusal = str(exc)
                    break
            self.taken = len(conns)
            self.filled.set()
            await asyncio.to_thread(self._release.wait)
        finally:
            self.filled.set()
            for conn in conns:
                await conn.close()

    def release(self) -> None:
        self._release.set()
        self._thread.join(timeout=30)


def test_a_server_without_a_free_connection_slot_after_a_restart_is_waited_out(
    small_cluster: PgCluster, slow_mock: str, tmp_path: Path
) -> None:
    small_cluster.psql("CREATE DATABASE fleet")
    url = small_cluster.admin_url("fleet")
    env = {**base_env(), "ARCHIVER_DATABASE_URL": url, "ARCHIVER_BASE_URL": slow_mock}
    ids = [f"resp_ok_slots{i}" for i in range(600)]
    queued = Cli(env, tmp_path)("enqueue", input="\n".join(ids).encode())
    assert queued.returncode == 0, queued.stderr
    run = spawn_archiver(
        {**env, "ARCHIVER_LOG_LEVEL": "error"},
        tmp_path,
        *("run", "--once", "--concurrency", "2", "--batch-size", "20"),
    )
    filler = None
    try:
        deadline = time.monotonic() + 30
        archived = "SELECT count(*) FROM archive_queue WHERE state = 'archived'"
        while int(small_cluster.psql(archived, "fleet")) < 20:
            assert time.monotonic() < deadline and run.poll() is None, run.communicate()
            time.sleep(0.1)
        # A restart as the fleet sees it: the run's connections end, and the other
        # processes reconnect first and take every slot, for 2 s.
        stopped = _signal([run.pid, *children_of(run.pid)], signal.SIGSTOP)
        small_cluster.psql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = 'fleet' AND pid <> pg_backend_pid()"
        )
        filler = SlotFiller(small_cluster.admin_url("postgres"))
        assert filler.filled.wait(30)
        assert "too many clients" in filler.refusal, filler.refusal
        _signal(stopped, signal.SIGCONT)
        time.sleep(2.0)
        filler.release()
        _, err = run.communicate(timeout=90)
    finally:
        if filler is not None:
            filler.release()
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 0, err.decode()[-2000:]
    assert b"Traceback" not in err
    assert _states(env, tmp_path) == {
        "pending": 0,
        "in_flight": 0,
        "archived": 600,
        "not_found": 0,
        "failed": 0,
    }
    _assert_archived_byte_exact(env, tmp_path, slow_mock, ids[:3])


def _stop_inside_a_write(
    pg_cluster: PgCluster, database: str, run: subprocess.Popen[bytes], name: str
) -> list[int]:
    """SIGSTOP ``run`` and its writer process at a moment its session is inside a write
    transaction (it holds row locks and the change counter's); returns the stopped PIDs."""
    inside = (
        f"SELECT count(*) FROM pg_stat_activity WHERE application_name = '{name}' "
        "AND state = 'idle in transaction' AND backend_xid IS NOT NULL"
    )
    for attempt in range(300):
        assert run.poll() is None, "the run ended before it was caught inside a write"
        stopped = _signal([run.pid, *children_of(run.pid)], signal.SIGSTOP)
        time.sleep(0.05)
        if int(pg_cluster.psql(inside, database)):
            return stopped
        _signal(stopped, signal.SIGCONT)
        time.sleep(0.01 * (attempt % 7))
    raise AssertionError("never caught the run inside a write transaction")


def _signal(pids: list[int], signum: int) -> list[int]:
    """Send ``signum`` to each of ``pids``; the ones that were still there."""
    reached = []
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:  # a child that just ended
            continue
        reached.append(pid)
    return reached


def test_a_process_stopped_inside_a_write_does_not_stall_the_fleet(
    pg_url: str, pg_cluster: PgCluster, slow_mock: str, tmp_path: Path
) -> None:
    database = _database(pg_url)
    env = {**base_env(), "ARCHIVER_DATABASE_URL": pg_url, "ARCHIVER_BASE_URL": slow_mock}
    ids = [f"resp_ok_paused{i}" for i in range(1000)]
    queued = Cli(env, tmp_path)("enqueue", input="\n".join(ids).encode())
    assert queued.returncode == 0, queued.stderr
    args = ("run", "--once", "--lease-seconds", "3", "--batch-size", "50", "--concurrency", "4")
    a_url = pg_url + ("&" if "?" in pg_url else "?") + "application_name=archiver-a"
    a = spawn_archiver({**env, "ARCHIVER_DATABASE_URL": a_url}, tmp_path, *args)
    b = spawn_archiver(env, tmp_path, *args)
    stopped: list[int] = []
    try:
        time.sleep(2.0)  # both started and writing
        # A host paused (a VM frozen, Ctrl-Z, a partition): its session waits inside a
        # write transaction, holding locks every writer of the fleet needs.
        stopped = _stop_inside_a_write(pg_cluster, database, a, "archiver-a")
        # B goes on: its own rows, then A's once their leases expire.
        try:
            _, b_err = b.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            stuck = pg_cluster.psql("SELECT state, count(*) FROM archive_queue GROUP BY state", database)
            raise AssertionError(f"B made no progress while A was stopped: {stuck}") from None
        assert b.returncode == 0, b_err.decode()[-2000:]
    finally:
        _signal(stopped, signal.SIGCONT)
        _, a_err = a.communicate(timeout=90)
        if b.poll() is None:
            b.kill()
            b.communicate()
    # A, resumed long past its lease, writes nothing over B's work and ends cleanly.
    assert a.returncode == 0, a_err.decode()[-2000:]
    assert b"Traceback" not in a_err + b_err
    assert _states(env, tmp_path) == {
        "pending": 0,
        "in_flight": 0,
        "archived": 1000,
        "not_found": 0,
        "failed": 0,
    }
    _assert_archived_byte_exact(env, tmp_path, slow_mock, ids[:3] + ids[-3:])


@pytest.mark.slow
def test_a_restart_under_two_runs_and_a_renormalize_loses_nothing(
    pg_url: str, pg_cluster: PgCluster, slow_mock: str, tmp_path: Path
) -> None:
    """What held: ``pg_ctl restart`` while two runs and a ``renormalize --all`` write (13 to
    50 s on a loaded 2-core host): every command exits 0, every ID is archived with the
    server's bytes, no lease is left, the renormalize leaves no position behind."""
    database = _database(pg_url)
    env = {**base_env(), "ARCHIVER_DATABASE_URL": pg_url, "ARCHIVER_BASE_URL": slow_mock}
    cli = Cli(env, tmp_path)
    first = [f"resp_ok_before{i}" for i in range(300)]
    assert cli("enqueue", input="\n".join(first).encode()).returncode == 0
    assert cli("run", "--once", "--concurrency", "32").returncode == 0
    later = [f"resp_ok_during{i}" for i in range(600)]
    assert cli("enqueue", input="\n".join(later).encode()).returncode == 0
    procs = [
        spawn_archiver(env, tmp_path, "run", "--once", "--lease-seconds", "5", "--batch-size", "20"),
        spawn_archiver(env, tmp_path, "run", "--once", "--lease-seconds", "5", "--batch-size", "20"),
        spawn_archiver(env, tmp_path, "renormalize", "--all", "--batch-size", "10"),
    ]
    archived_during = (
        "SELECT count(*) FROM archive_queue WHERE state = 'archived' AND id LIKE 'resp_ok_during%'"
    )
    try:
        # Mid-run: the runs have written batches and go on writing, both hold claims, and
        # the renormalize holds its lock: all three are past their start (a command whose
        # start the restart cuts off ends with one line, exit 1: that is not this test's).
        started = (
            "SELECT (SELECT count(DISTINCT lease_owner) FROM archive_queue WHERE state = 'in_flight')"
            " + (SELECT count(*) FROM archive_meta WHERE name = 'rebuild_running')"
        )
        deadline = time.monotonic() + 60
        while (
            int(pg_cluster.psql(archived_during, database)) < 60
            or int(pg_cluster.psql(started, database)) < 3
        ):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
            time.sleep(0.05)
        pg_cluster.restart()
        results = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    for p, (_, err) in zip(procs, results, strict=True):
        assert b"Traceback" not in err, err.decode()[-3000:]
        assert p.returncode == 0, (p.args, err.decode()[-3000:])
    assert _states(env, tmp_path) == {
        "pending": 0,
        "in_flight": 0,
        "archived": 900,
        "not_found": 0,
        "failed": 0,
    }
    assert json.loads(cli("status", "--json").stdout)["expired_leases"] == 0
    assert pg_cluster.psql("SELECT count(*) FROM archive_meta WHERE name = 'renormalize'", database) == "0"
    _assert_archived_byte_exact(env, tmp_path, slow_mock, first[:3] + first[-3:] + later[:3] + later[-3:])
