"""A stop signal ends ``archiver run`` within its stated bound while the database fails.

The daemon talks to PostgreSQL through a proxy the test cuts (the server gone: connections
reset and refused; or out of reach: every packet dropped), or to a SQLite file another
process holds the write lock of, while requests are in flight; then it gets SIGTERM. It
must exit within ``--grace-seconds`` + ``--final-write-seconds`` + 1 s, with one line
saying what it left, no traceback, and the writer process gone too. Once the database is
back and the leases expire, a second run archives every ID with the server's bytes.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from archiver.deadline import EXIT_MARGIN_S
from archiver.errors import DatabaseFault
from archiver.rebuild_lock import LOCK_SUFFIX
from tests.pgserver import PgCluster
from tests.tcpproxy import TcpProxy, tcp_proxy

from .conftest import Cli, base_env, children_of, is_running, start_mock_process
from .test_crash import (
    FAST,
    check_invariant,
    enqueue,
    read_queue,
    requests_for,
    run_once,
    spawn,
    stop_for_good,
    wait_for_leases_to_expire,
    wait_until,
)

pytestmark = pytest.mark.timeout(180)

GRACE_S = 1.0
FINAL_WRITE_S = 2.0
BOUND_S = GRACE_S + FINAL_WRITE_S + EXIT_MARGIN_S
"""The most a stop may take (README, "Stopping")."""
SLACK_S = 1.0
"""A loaded machine."""


@pytest.fixture(scope="module")
def mock_500ms(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from start_mock_process(tmp_path_factory.mktemp("mock500"), "--latency-ms", "500")


@pytest.fixture(scope="module")
def mock_now(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from start_mock_process(tmp_path_factory.mktemp("mock0"), "--latency-ms", "0")


@pytest.fixture
def proxied(pg_cluster: PgCluster, pg_url: str) -> Iterator[tuple[str, TcpProxy]]:
    """(the test database's URL through a proxy, the proxy)."""
    url = make_url(pg_url)
    assert url.host is not None and url.port is not None
    with tcp_proxy(url.host, url.port) as proxy:
        yield url.set(port=proxy.port).render_as_string(hide_password=False), proxy


def archived(db_url: str) -> int:
    return sum(r.state == "archived" for r in read_queue(db_url).values())


def served_body(base_url: str, response_id: str) -> bytes:
    # The mock process on loopback: always an http:// URL the fixture built.
    with urllib.request.urlopen(f"{base_url}/responses/{response_id}", timeout=10) as answer:  # noqa: S310
        return bytes(answer.read())


def start_daemon(cli: Cli, db_url: str, ids: list[str], mock: str, tmp_path: Path) -> subprocess.Popen[bytes]:
    """Enqueue ``ids`` and start the daemon (the stop bound's settings); returns once its
    writer process writes (8 archived) and the next requests are in flight."""
    enqueue(cli, ids)
    env = {
        **FAST,
        "ARCHIVER_BASE_URL": mock,
        "ARCHIVER_LEASE_SECONDS": "3",
        "ARCHIVER_GRACE_SECONDS": str(GRACE_S),
        "ARCHIVER_FINAL_WRITE_SECONDS": str(FINAL_WRITE_S),
        "ARCHIVER_LOG_LEVEL": "info",
    }
    proc = spawn(cli, tmp_path / "daemon", "run", "--concurrency", "8", **env)
    try:
        wait_until(lambda: archived(db_url) >= 8, "8 archived", proc=proc)
    except BaseException:
        stop_for_good(proc)
        raise
    return proc


def stop_while_the_database_fails(
    cli: Cli, db_url: str, ids: list[str], fail: Callable[[], None], mock: str, tmp_path: Path
) -> str:
    """Run the daemon with ``cli``'s database; once rows are archived and more in flight,
    ``fail()`` the database and send SIGTERM: the process must end within the bound, with
    its writer process, one line about the rows it left, and no traceback. Its stderr."""
    proc = start_daemon(cli, db_url, ids, mock, tmp_path)
    try:
        children = children_of(proc.pid)
        fail()
        time.sleep(0.2)  # requests in flight now answer into a database that fails
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        returncode = proc.wait(timeout=150)
        took = time.monotonic() - sent
    finally:
        stop_for_good(proc)
    stderr = (tmp_path / "daemon" / "stderr").read_text()
    print(f"the stop took {took:.2f}s, exit {returncode}")
    assert took < BOUND_S + SLACK_S, f"the stop took {took:.1f}s: {stderr[-3000:]}"
    assert "Traceback" not in stderr, stderr[-3000:]
    assert not [pid for pid in children if is_running(pid)], "the writer process outlived the stop"
    assert returncode == 1, stderr[-3000:]
    left = [json.loads(line) for line in stderr.splitlines() if "archiver.stop_left_in_flight" in line]
    assert len(left) == 1 and left[0]["count"] > 0, stderr[-3000:]
    return stderr


def archive_the_rest(cli: Cli, db_url: str, ids: list[str], mocks: tuple[str, str]) -> None:
    """Once the leases expired, a run archives every ID, with the server's bytes."""
    assert any(r.state == "in_flight" for r in read_queue(db_url).values()), "nothing was left in flight"
    wait_for_leases_to_expire(db_url)
    summary = run_once(cli, mocks[1], ARCHIVER_LEASE_SECONDS="3")
    assert summary["remaining"].get("pending", 0) == 0, summary
    check_invariant(db_url, ids, requests_for(ids, *mocks))
    for rid in ids[:3]:
        shown = cli("show", rid)
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout == served_body(mocks[1], rid)


@pytest.mark.parametrize("fault", ["refuse", "blackhole"])
def test_sigterm_with_postgresql_gone_exits_within_the_bound(
    fault: str,
    proxied: tuple[str, TcpProxy],
    pg_url: str,
    mock_500ms: str,
    mock_now: str,
    tmp_path: Path,
) -> None:
    """The server refuses connections (stopped) or drops every packet (out of reach)."""
    through_proxy, proxy = proxied
    cli = Cli({**base_env(), "ARCHIVER_DATABASE_URL": through_proxy}, tmp_path)
    ids = [f"resp_ok_stopbound_{fault}_{i}" for i in range(40)]
    try:
        stderr = stop_while_the_database_fails(cli, pg_url, ids, getattr(proxy, fault), mock_500ms, tmp_path)
    finally:
        proxy.restore()
    # Every call given up at the deadline, the command ends the usual way.
    assert "rows neither written nor released" in stderr.splitlines()[-1], stderr[-3000:]
    archive_the_rest(cli, pg_url, ids, (mock_500ms, mock_now))


def test_sigterm_with_sqlite_locked_by_another_process_exits_within_the_bound(
    sqlite_cli: Cli, mock_500ms: str, mock_now: str, tmp_path: Path
) -> None:
    """Another process holds the archive's write lock: every write waits in SQLite's busy
    handler (60 s a try), which nothing can interrupt; the process still ends in time."""
    db_url = sqlite_cli.env["ARCHIVER_DATABASE_URL"]
    path = make_url(db_url).database
    assert path is not None
    ids = [f"resp_ok_stopbound_locked_{i}" for i in range(40)]
    holder = sqlite3.connect(path, isolation_level=None)

    def lock() -> None:
        holder.execute("BEGIN IMMEDIATE")

    try:
        stderr = stop_while_the_database_fails(sqlite_cli, db_url, ids, lock, mock_500ms, tmp_path)
    finally:
        holder.close()  # rolls the empty transaction back: the lock is free
    # The statement given up still waits in its thread: the backstop, or the usual end.
    last = stderr.splitlines()[-1]
    assert "archiver.stop_deadline_exit" in last or "rows neither written nor released" in last, last
    archive_the_rest(sqlite_cli, db_url, ids, (mock_500ms, mock_now))


def queued(db_url: str) -> int:
    try:
        return len(read_queue(db_url))
    except DatabaseFault:  # not migrated yet: the command is starting
        return 0


def stop_within(proc: subprocess.Popen[bytes], bound: float, log: Path) -> tuple[int, str]:
    """SIGTERM ``proc``; it must end within ``bound`` (and a loaded machine's slack) without a
    traceback. Its exit status and stderr."""
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        returncode = proc.wait(timeout=150)
    finally:
        stop_for_good(proc)
    took = time.monotonic() - sent
    stderr = (log / "stderr").read_text()
    print(f"the stop took {took:.2f}s, exit {returncode}")
    assert took < bound + SLACK_S, f"the stop took {took:.1f}s: {stderr[-3000:]}"
    assert "Traceback" not in stderr, stderr[-3000:]
    return returncode, stderr


def test_enqueue_follow_stops_within_the_bound_while_sqlite_is_locked(
    sqlite_cli: Cli, tmp_path: Path
) -> None:
    """The last commit waits for a lock another process holds: ``--final-write-seconds`` + 1 s
    (the unit's TimeoutStopSec=30 allows that at the defaults); the lines it could not
    commit are read again by the next start, from the saved position."""
    db_url = sqlite_cli.env["ARCHIVER_DATABASE_URL"]
    path = make_url(db_url).database
    assert path is not None
    log = tmp_path / "app.log"
    log.write_text("".join(f"resp_follow_{i}\n" for i in range(5)))
    env = {"ARCHIVER_FINAL_WRITE_SECONDS": str(FINAL_WRITE_S)}
    proc = spawn(sqlite_cli, tmp_path / "follow", "enqueue", "--follow", str(log), **env)
    wait_until(lambda: queued(db_url) == 5, "5 queued", proc=proc)
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with log.open("a") as f:
            f.write("".join(f"resp_follow_{i}\n" for i in range(5, 10)))
        time.sleep(1.0)  # read, and its commit waits for the lock
        returncode, stderr = stop_within(proc, FINAL_WRITE_S + EXIT_MARGIN_S, tmp_path / "follow")
    finally:
        holder.close()
    assert returncode == 1, stderr[-3000:]
    assert queued(db_url) == 5
    again = spawn(sqlite_cli, tmp_path / "again", "enqueue", "--follow", str(log), **env)
    wait_until(lambda: queued(db_url) == 10, "the other 5 queued by the next start", proc=again)
    returncode, stderr = stop_within(again, FINAL_WRITE_S + EXIT_MARGIN_S, tmp_path / "again")
    assert returncode == 0, stderr[-3000:]


def wait_for_rebuild_lock(lock_path: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Return once ``proc`` holds the SQLite rebuild lock: the holder's description is
    written into ``lock_path`` once its flock is taken (testing the flock itself could
    make the rebuild refuse)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the rebuild ended before it took its lock"
        if os.path.exists(lock_path) and os.path.getsize(lock_path) > 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"no rebuild lock on {lock_path} within {timeout:.0f} s")


def test_renormalize_stops_within_the_bound_while_sqlite_is_locked(
    sqlite_cli: Cli, mock_now: str, tmp_path: Path
) -> None:
    """The batch in flight waits for a lock: rolled back at the deadline; the rerun finishes."""
    db_url = sqlite_cli.env["ARCHIVER_DATABASE_URL"]
    path = make_url(db_url).database
    assert path is not None
    ids = [f"resp_ok_renorm_locked_{i}" for i in range(20)]
    enqueue(sqlite_cli, ids)
    assert run_once(sqlite_cli, mock_now)["archived"] == len(ids)
    env = {"ARCHIVER_FINAL_WRITE_SECONDS": str(FINAL_WRITE_S)}
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        proc = spawn(sqlite_cli, tmp_path / "renorm", "renormalize", "--all", "--batch-size", "5", **env)
        # Started (a fixed 2 s was too short on a loaded machine: the SIGTERM came before
        # the first batch and the stop was a clean exit 0); then its first batch waits.
        wait_for_rebuild_lock(os.path.realpath(path) + LOCK_SUFFIX, proc)
        time.sleep(1.0)
        returncode, stderr = stop_within(proc, FINAL_WRITE_S + EXIT_MARGIN_S, tmp_path / "renorm")
    finally:
        holder.close()
    assert returncode == 1, stderr[-3000:]
    out = sqlite_cli("renormalize", "--all")
    assert out.returncode == 0, out.stderr
