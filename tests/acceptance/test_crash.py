"""Crashes and stops of the real CLI: ``archiver run`` subprocesses killed with SIGKILL,
stopped with SIGTERM, and stopped twice, against ``archiver mock-server`` processes.

After each, a later ``run --once`` finishes the queue and the invariant of
``tests/integration/test_faults.py`` holds: every ID archived exactly once with the
server's bytes, attempts within bounds, nothing left ``in_flight``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from archiver.db import open_database
from archiver.queue import QueueStore
from tests.integration.test_faults import QueueRow, assert_invariant, queue_rows, unique_ids

from .conftest import Cli, children_of, is_running, start_mock_process

pytestmark = pytest.mark.timeout(180)

FAST = {
    "ARCHIVER_BACKOFF_BASE": "0.01",
    "ARCHIVER_BACKOFF_CAP": "0.05",
    "ARCHIVER_NOT_FOUND_RECHECK": "0.05",
    "ARCHIVER_REPOLL": "0.02",
    "ARCHIVER_POLL_INTERVAL": "0.05",
    "ARCHIVER_MAX_ATTEMPTS": "4",
}
MAX_ATTEMPTS = 4


# --- mock servers (one process each, shared by the module; IDs are unique per test) ---------


def _mock(tmp_path_factory: pytest.TempPathFactory, latency_ms: int) -> Iterator[str]:
    yield from start_mock_process(
        tmp_path_factory.mktemp(f"mock{latency_ms}"), "--latency-ms", str(latency_ms)
    )


@pytest.fixture(scope="module")
def mock_fast(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from _mock(tmp_path_factory, 0)


@pytest.fixture(scope="module")
def mock_50ms(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from _mock(tmp_path_factory, 50)


@pytest.fixture(scope="module")
def mock_300ms(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from _mock(tmp_path_factory, 300)


@pytest.fixture(scope="module")
def mock_2s(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from _mock(tmp_path_factory, 2000)


def mock_stats(base_url: str) -> dict[str, Any]:
    """``GET /_mock/stats`` of a mock process."""
    root = base_url.rsplit("/v1", 1)[0]
    # The mock process on loopback: always an http:// URL the fixture built.
    with urllib.request.urlopen(f"{root}/_mock/stats", timeout=10) as answer:  # noqa: S310
        return dict(json.loads(answer.read()))


def requests_for(ids: list[str], *base_urls: str) -> dict[str, int]:
    """Requests per ID, summed over several mock processes."""
    total: Counter[str] = Counter()
    for url in base_urls:
        by_id = mock_stats(url)["requests_by_id"]
        total.update({rid: by_id[rid] for rid in ids if rid in by_id})
    return dict(total)


# --- the database, read from the test process ---------------------------------------------


def db_url_of(cli: Cli) -> str:
    return cli.env["ARCHIVER_DATABASE_URL"]


def read_queue(db_url: str) -> dict[str, QueueRow]:
    async def read() -> dict[str, QueueRow]:
        async with open_database(db_url, upgrade=False) as engine:
            return await queue_rows(engine)

    return asyncio.run(read())


def queue_status(db_url: str) -> dict[str, Any]:
    async def read() -> dict[str, Any]:
        async with open_database(db_url, upgrade=False) as engine:
            return await QueueStore(engine).status_details()

    return asyncio.run(read())


def check_invariant(db_url: str, ids: list[str], requests_by_id: Mapping[str, int]) -> dict[str, QueueRow]:
    """Every ID archived with the server's bytes; see ``assert_invariant``."""

    async def check() -> dict[str, QueueRow]:
        async with open_database(db_url, upgrade=False) as engine:
            return await assert_invariant(
                engine,
                dict.fromkeys(ids, "archived"),
                requests_by_id=requests_by_id,
                max_attempts=MAX_ATTEMPTS,
            )

    return asyncio.run(check())


# --- processes ---------------------------------------------------------------------------


def enqueue(cli: Cli, ids: list[str]) -> None:
    out = cli("enqueue", input="\n".join(ids).encode())
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode().startswith(f"queued {len(ids)},")


def spawn(
    cli: Cli, log_dir: Path, *args: str, new_session: bool = False, **env: str
) -> subprocess.Popen[bytes]:
    """``python -m archiver ARGS`` in the background; output goes to files (never a full pipe).

    ``new_session``: in a process group of its own, which a test may signal as a whole.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    with (log_dir / "stdout").open("wb") as out, (log_dir / "stderr").open("wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "archiver", *args],
            stdout=out,
            stderr=err,
            env={**cli.env, **env},
            cwd=cli.cwd,
            start_new_session=new_session,
        )


def stop_for_good(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)


def wait_until(
    condition: Callable[[], bool],
    what: str,
    timeout: float = 30.0,
    proc: subprocess.Popen[bytes] | None = None,
    interval: float = 0.05,
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) before: {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        time.sleep(interval)


def wait_for_leases_to_expire(db_url: str, timeout: float = 15.0) -> None:
    def expired() -> bool:
        status = queue_status(db_url)
        return bool(status["expired_leases"] == status["states"]["in_flight"])

    wait_until(expired, "every lease held by the dead worker to expire", timeout)


def run_once(cli: Cli, base_url: str, **env: str) -> dict[str, Any]:
    variables: dict[str, Any] = {**FAST, "ARCHIVER_BASE_URL": base_url, **env}
    out = cli("run", "--once", "--concurrency", "8", **variables)
    assert out.returncode == 0, out.stderr.decode()[-3000:]
    return dict(json.loads(out.stdout))


# --- tests --------------------------------------------------------------------------------


def test_sigkill_mid_run_then_a_second_run_finishes_everything(
    cli: Cli, mock_50ms: str, tmp_path: Path
) -> None:
    """kill -9 while rows are in flight: the second run recovers them once leases expire."""
    db_url = db_url_of(cli)
    ids = unique_ids("resp_ok_kill{}", 600)
    enqueue(cli, ids)
    env = {**FAST, "ARCHIVER_BASE_URL": mock_50ms, "ARCHIVER_LEASE_SECONDS": "2"}
    proc = spawn(cli, tmp_path / "run1", "run", "--once", "--concurrency", "8", **env)
    try:

        def some_archived_some_in_flight() -> bool:
            states = queue_status(db_url)["states"]
            return bool(states["archived"] >= 60 and states["in_flight"] >= 8)

        wait_until(some_archived_some_in_flight, "60 archived and 8 in flight", proc=proc)
        children = children_of(proc.pid)  # the writer process, when the run has one
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        stop_for_good(proc)
    # An orphaned writer may still commit the batch it holds: the queue is read once it is gone.
    wait_until(lambda: not any(map(is_running, children)), "the killed run's writer process to exit")

    at_kill = read_queue(db_url)
    killed = {rid for rid, r in at_kill.items() if r.state == "in_flight"}
    archived_early = {rid for rid, r in at_kill.items() if r.state == "archived"}
    assert killed, "nothing was in flight at the kill"
    assert 60 <= len(archived_early) < len(ids), "the kill did not land mid-run"
    assert all(at_kill[rid].attempts >= 1 for rid in killed)

    # Until the leases expire nobody may take the rows; then the claimer recovers them.
    wait_for_leases_to_expire(db_url)
    summary = run_once(cli, mock_50ms, ARCHIVER_LEASE_SECONDS="2")
    assert summary["archived"] == len(ids) - len(archived_early), summary
    assert summary["remaining"]["in_flight"] == 0

    by_id = requests_for(ids, mock_50ms)
    rows = check_invariant(db_url, ids, by_id)
    for rid in killed:
        # The attempt the dead worker held is given back: the crash was not the ID's fault.
        assert rows[rid].attempts == at_kill[rid].attempts >= 1, rid
    for rid in archived_early:
        # Archived before the kill: never fetched again.
        assert rows[rid].attempts == 1 and by_id[rid] == 1, rid


def test_sigterm_stops_gracefully_and_spends_no_attempt_on_unfinished_rows(
    cli: Cli, mock_300ms: str, mock_fast: str, tmp_path: Path
) -> None:
    """SIGTERM on the daemon: exit 0 within the grace period, unfinished rows back to pending."""
    db_url = db_url_of(cli)
    grace = 5.0
    ids = unique_ids("resp_ok_term{}", 240)
    enqueue(cli, ids)
    # A long lease: rows not released on the way out would stay stuck for the whole test.
    env = {
        **FAST,
        "ARCHIVER_BASE_URL": mock_300ms,
        "ARCHIVER_LEASE_SECONDS": "60",
        "ARCHIVER_GRACE_SECONDS": str(grace),
    }
    proc = spawn(cli, tmp_path / "daemon", "run", "--concurrency", "8", **env)
    try:
        wait_until(
            lambda: queue_status(db_url)["states"]["archived"] >= 16,
            "16 archived",
            proc=proc,
        )
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        returncode = proc.wait(timeout=grace + 10)
        took = time.monotonic() - sent
    finally:
        stop_for_good(proc)
    stderr = (tmp_path / "daemon" / "stderr").read_text()
    assert returncode == 0, stderr[-3000:]
    assert took < grace, f"graceful stop took {took:.1f}s"
    assert "Traceback" not in stderr

    rows = read_queue(db_url)
    states = Counter(r.state for r in rows.values())
    assert states["in_flight"] == 0, states
    assert states["pending"] > 0, "the run finished before the signal"
    assert set(states) <= {"archived", "pending"}, states
    spent = {rid: r.attempts for rid, r in rows.items() if r.state == "pending" and r.attempts}
    assert not spent, f"unfinished rows lost an attempt: {dict(list(spent.items())[:5])}"
    assert all(r.attempts == 1 for r in rows.values() if r.state == "archived")

    summary = run_once(cli, mock_fast)
    assert summary["archived"] == states["pending"], summary
    check_invariant(db_url, ids, requests_for(ids, mock_300ms, mock_fast))


def test_a_second_signal_exits_at_once_and_leases_recover_the_rows(
    cli: Cli, mock_2s: str, mock_fast: str, tmp_path: Path
) -> None:
    """SIGTERM then SIGINT: no waiting for the 2 s fetches; expired leases free their rows."""
    db_url = db_url_of(cli)
    ids = unique_ids("resp_ok_twice{}", 60)
    enqueue(cli, ids)
    env = {
        **FAST,
        "ARCHIVER_BASE_URL": mock_2s,
        "ARCHIVER_LEASE_SECONDS": "1",
        "ARCHIVER_GRACE_SECONDS": "20",
    }
    proc = spawn(cli, tmp_path / "daemon", "run", "--concurrency", "8", **env)
    try:
        wait_until(lambda: len(requests_for(ids, mock_2s)) >= 8, "8 requests in flight", proc=proc)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert proc.poll() is None, "the first signal did not wait for the in-flight fetches"
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        returncode = proc.wait(timeout=10)
        took = time.monotonic() - sent
    finally:
        stop_for_good(proc)
    assert returncode > 0, f"expected a non-zero exit status, got {returncode}"
    assert took < 1.0, f"the second signal took {took:.2f}s to end the process"

    at_exit = read_queue(db_url)
    abandoned = {rid for rid, r in at_exit.items() if r.state == "in_flight"}
    assert abandoned, "no fetch was abandoned in flight"
    assert not any(r.state == "archived" for r in at_exit.values())

    wait_for_leases_to_expire(db_url)
    summary = run_once(cli, mock_fast, ARCHIVER_LEASE_SECONDS="1")
    assert summary["archived"] == len(ids), summary
    rows = check_invariant(db_url, ids, requests_for(ids, mock_2s, mock_fast))
    for rid in abandoned:
        assert rows[rid].attempts == 1, rid  # the abandoned attempt was given back


def test_a_second_signal_leaves_no_writer_process_behind(
    sqlite_cli: Cli, mock_fast: str, tmp_path: Path
) -> None:
    """SIGTERM then SIGINT while the writer process waits on a write (another process holds
    the SQLite file's write lock): the run exits at once and takes its writer process
    with it, rather than leaving it waiting in SQLite's busy handler (60 s) for a pipe
    nobody reads. What was archived stays archived; the rest is finished by a later run."""
    import sqlite3

    cli = sqlite_cli
    db_url = db_url_of(cli)
    ids = unique_ids("resp_ok_orphan{}", 3000)
    enqueue(cli, ids)
    env = {
        **FAST,
        "ARCHIVER_BASE_URL": mock_fast,
        "ARCHIVER_WRITER": "process",
        "ARCHIVER_LEASE_SECONDS": "2",
    }
    proc = spawn(cli, tmp_path / "daemon", "run", "--concurrency", "8", "--batch-size", "20", **env)
    holder = sqlite3.connect(str(tmp_path / "archive.db"), timeout=30, isolation_level=None)
    children: list[int] = []
    try:
        wait_until(lambda: queue_status(db_url)["states"]["archived"] >= 40, "40 IDs archived", proc=proc)
        children = children_of(proc.pid)
        assert children, "no writer process"
        holder.execute("BEGIN IMMEDIATE")  # the next batch waits in SQLite's busy handler
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert proc.poll() is None, "the first signal did not wait for the final writes"
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        returncode = proc.wait(timeout=10)
        left = [pid for pid in children if is_running(pid)]
        deadline = time.monotonic() + 3.0
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = [pid for pid in children if is_running(pid)]
        took = time.monotonic() - sent
        assert not left, f"writer process {left} still runs {took:.1f}s after the second signal"
    finally:
        if holder.in_transaction:
            holder.execute("ROLLBACK")
        holder.close()
        stop_for_good(proc)
        for pid in children:
            if is_running(pid):
                os.kill(pid, signal.SIGKILL)
    assert returncode > 0, returncode
    archived_before = {rid for rid, r in read_queue(db_url).items() if r.state == "archived"}
    assert len(archived_before) >= 40

    wait_for_leases_to_expire(db_url)
    summary = run_once(cli, mock_fast, ARCHIVER_LEASE_SECONDS="2")
    assert summary["archived"] == len(ids) - len(archived_before), summary
    check_invariant(db_url, ids, requests_for(ids, mock_fast))
