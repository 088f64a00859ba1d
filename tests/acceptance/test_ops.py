"""Operations from the outside: sd_notify from a real `archiver run`, `archiver check` exit codes."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from .conftest import Cli

pytestmark = pytest.mark.timeout(120)


def test_run_notifies_systemd_ready_and_stopping(sqlite_cli: Cli, mock_process: str, tmp_path: Path) -> None:
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(0.1)
    try:
        sqlite_cli("enqueue", input=b"resp_ok_n1\nresp_ok_n2\n")
        out = sqlite_cli("run", "--once", ARCHIVER_BASE_URL=mock_process, NOTIFY_SOCKET=str(sock_path))
        assert out.returncode == 0, out.stderr
        messages = []
        while True:
            try:
                messages.append(sock.recv(4096).decode())
            except TimeoutError:
                break
    finally:
        sock.close()
    assert messages, "no sd_notify datagram arrived"
    assert messages[0].startswith("READY=1")
    assert messages[-1].startswith("STOPPING=1")


def test_check_exit_codes(sqlite_cli: Cli, tmp_path: Path) -> None:
    fresh = sqlite_cli("check")
    # check never creates or migrates: a missing SQLite file is a problem, not a new database.
    assert fresh.returncode == 1 and b"does not exist" in fresh.stderr
    assert sqlite_cli("migrate").returncode == 0
    ok = sqlite_cli("check")
    assert ok.returncode == 0 and ok.stdout.strip() == b"ok"
    sqlite_cli("enqueue", input=b"resp_ok_c1\n")
    stalled = sqlite_cli("check", "--max-pending-age", "0")
    assert stalled.returncode == 1 and b"queue stalled" in stalled.stderr
    negative = sqlite_cli("check", "--max-pending-age", "-1")  # not an age: exit 2, not a verdict
    assert negative.returncode == 2 and b"--max-pending-age" in negative.stderr
    down = sqlite_cli("check", ARCHIVER_DATABASE_URL="postgresql://u:pw-secret@127.0.0.1:1/x")
    assert down.returncode == 1 and b"database unreachable" in down.stderr
    assert b"pw-secret" not in down.stderr and b"Traceback" not in down.stderr
