"""The writer process (``--writer process``, the default on 2+ cores) under stops and kills.

Each test runs the real CLI, which starts its own ``python -m archiver.childproc`` writer process, and
then checks the invariant of ``tests/integration/test_faults.py`` after a later run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import Cli, children_of, is_running
from .test_crash import (
    FAST,
    check_invariant,
    db_url_of,
    enqueue,
    mock_50ms,  # noqa: F401 (a module fixture)
    mock_300ms,  # noqa: F401 (a module fixture)
    queue_status,
    requests_for,
    run_once,
    spawn,
    stop_for_good,
    unique_ids,
    wait_for_leases_to_expire,
    wait_until,
)

pytestmark = pytest.mark.timeout(180)

SECRET = "sk-writer-test-0123456789abcdef"  # noqa: S105 (a fake key to look for)


def writer_pid(parent: int) -> int:
    """The writer process (``archiver.childproc``) of ``parent`` (waits for it to appear)."""
    pids: list[int] = []

    def started() -> bool:
        pids[:] = [
            pid for pid in children_of(parent) if b"archiver.childproc" in _read(f"/proc/{pid}/cmdline")
        ]
        return bool(pids)

    wait_until(started, "the writer process to start")
    return pids[0]


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError:
        return b""


def start_run(cli: Cli, log_dir: Path, ids: list[str], base_url: str, **env: str) -> subprocess.Popen[bytes]:
    """Enqueue ``ids``, then ``run --once`` in the background with a writer process."""
    enqueue(cli, ids)
    variables = {**FAST, "ARCHIVER_BASE_URL": base_url, "ARCHIVER_LEASE_SECONDS": "2", **env}
    variables["ARCHIVER_WRITER"] = "process"
    return spawn(cli, log_dir, "run", "--once", "--concurrency", "8", **variables)


def finish_and_check(cli: Cli, ids: list[str], base_url: str) -> None:
    """Once the dead run's leases expire, a second run archives the rest: the invariant holds."""
    db_url = db_url_of(cli)
    wait_for_leases_to_expire(db_url)
    summary = run_once(cli, base_url, ARCHIVER_LEASE_SECONDS="2")
    assert summary["remaining"]["archived"] == len(ids), summary
    check_invariant(db_url, ids, requests_for(ids, base_url))


def test_sigterm_to_the_whole_process_group_still_writes_what_finished(
    cli: Cli,
    mock_300ms: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    """systemd's stop and a terminal's Ctrl-C signal the writer too: it must keep writing."""
    db_url = db_url_of(cli)
    ids = unique_ids("resp_ok_pgroup{}", 240)
    enqueue(cli, ids)
    env = {
        **FAST,
        "ARCHIVER_BASE_URL": mock_300ms,
        "ARCHIVER_LEASE_SECONDS": "60",
        "ARCHIVER_WRITER": "process",
    }
    proc = spawn(cli, tmp_path / "daemon", "run", "--concurrency", "8", **env, new_session=True)
    try:
        child = writer_pid(proc.pid)
        wait_until(lambda: queue_status(db_url)["states"]["archived"] >= 16, "16 archived", proc=proc)
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, (tmp_path / "daemon" / "stderr").read_text()
    finally:
        stop_for_good(proc)
    wait_until(lambda: not is_running(child), "the writer process to exit", timeout=10)
    stderr = (tmp_path / "daemon" / "stderr").read_text()
    assert "Traceback" not in stderr and "writer_exited" not in stderr, stderr
    states = queue_status(db_url)["states"]
    # Fetches that finished were written; the rest went back to pending: nothing in flight.
    assert states["in_flight"] == 0 and states["archived"] + states["pending"] == len(ids), states
    assert states["archived"] >= 16
    summary = run_once(cli, mock_300ms)
    assert summary["remaining"]["archived"] == len(ids)
    check_invariant(db_url, ids, requests_for(ids, mock_300ms))


def test_killing_the_writer_process_stops_the_run_clearly_and_loses_nothing(
    sqlite_cli: Cli,
    mock_50ms: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    cli = sqlite_cli
    db_url = db_url_of(cli)
    ids = unique_ids("resp_ok_wkill{}", 600)
    proc = start_run(cli, tmp_path / "run1", ids, mock_50ms)
    try:
        child = writer_pid(proc.pid)
        wait_until(lambda: queue_status(db_url)["states"]["archived"] >= 60, "60 archived", proc=proc)
        os.kill(child, signal.SIGKILL)
        returncode = proc.wait(timeout=30)
    finally:
        stop_for_good(proc)
    stderr = (tmp_path / "run1" / "stderr").read_text()
    assert returncode == 1, stderr
    assert "archiver: error: the writer process exited" in stderr, stderr
    assert "Traceback" not in stderr
    # What the dead writer never confirmed is still leased, then recovered and fetched again.
    finish_and_check(cli, ids, mock_50ms)


def test_the_writer_process_exits_with_a_killed_parent_and_never_sees_the_key(
    sqlite_cli: Cli,
    mock_300ms: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    cli = sqlite_cli
    db_url = db_url_of(cli)
    ids = unique_ids("resp_ok_orphan{}", 200)
    proc = start_run(cli, tmp_path / "run1", ids, mock_300ms, ARCHIVER_API_KEY=SECRET)
    try:
        child = writer_pid(proc.pid)
        assert SECRET.encode() not in _read(f"/proc/{child}/environ")
        assert SECRET.encode() not in _read(f"/proc/{child}/cmdline")
        assert _read(f"/proc/{child}/environ"), "cannot read the child's environment"
        wait_until(lambda: queue_status(db_url)["states"]["archived"] >= 16, "16 archived", proc=proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        stop_for_good(proc)
    started = time.monotonic()
    wait_until(lambda: not is_running(child), "the orphaned writer process to exit", timeout=15)
    assert time.monotonic() - started < 15
    finish_and_check(cli, ids, mock_300ms)
