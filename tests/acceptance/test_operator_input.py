"""Operator input that used to end in a traceback, a hang or a silent failure (issue 16).

Found by a hostile tester: ``nan``/``inf``/out-of-range numbers in flags and variables, an
API key with a line break, ``/dev/zero`` as a key file, an empty ``--metrics-host``,
stdout or stderr closed at start, a reader that leaves in the middle of ``show``, and a
stop signal while ``enqueue`` is still starting. Each must be one line (exit 2 for a bad
value, 1 for a failed command), never a traceback, and lose nothing.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from archiver.ranges import OPTION_RANGES, SETTING_RANGES
from tests.acceptance.conftest import base_env

TIMEOUT_S = 60


def archiver(*args: str, cwd: Path, env: dict[str, str] | None = None, **kwargs: Any) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "archiver", *args],
        capture_output=kwargs.pop("capture_output", True),
        env={**base_env(), **(env or {})},
        cwd=cwd,
        timeout=TIMEOUT_S,
        check=False,
        **kwargs,
    )


def one_line(done: Any, code: int, *needles: str) -> str:
    err = done.stderr.decode(errors="replace")
    assert done.returncode == code, f"exit {done.returncode}: {err[-1500:]}"
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if not line.startswith(("usage:", " "))]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


BAD_NUMBERS = ("nan", "inf", "-inf", "-1", "1e30", "99999999999999999999999")


@pytest.mark.parametrize("field", sorted(SETTING_RANGES))
def test_every_numeric_variable_refuses_values_out_of_range(field: str, tmp_path: Path) -> None:
    """Through settings_from (the CLI's own path), every bad value of every variable is exit 2."""
    import argparse

    from archiver.cli import settings_from
    from archiver.errors import ConfigError

    variable = f"ARCHIVER_{field.upper()}"
    for bad in BAD_NUMBERS:  # outside every field's range
        with pytest.raises(ConfigError, match=f"{variable}='{bad}': must be"):
            settings_from(argparse.Namespace(command="run"), {variable: bad})


def test_flags_out_of_range_are_exit_2_naming_the_range(tmp_path: Path) -> None:
    cases = [
        (["run", "--once", "--concurrency", "1000000000"], "--concurrency", "from 1 to 4096"),
        (["run", "--once", "--max-body-mb", "nan"], "--max-body-mb", "above 0"),
        (["run", "--once", "--request-timeout", "inf"], "--request-timeout", "above 0"),
        (["run", "--once", "--max-attempts", "1000000000000000000000"], "--max-attempts", "to 1000"),
        (["status", "--limit", "100000000000000000000"], "--limit", "to 1000000"),
        (["check", "--max-expired-leases", "-5"], "--max-expired-leases", "from 0"),
        (["check", "--max-pending-age", "nan"], "--max-pending-age", "a number"),
        (["export", str(tmp_path / "x"), "--chunk-size", "0"], "--chunk-size", "from 1"),
        (["mock-server", "--port", "70000"], "--port", "to 65535"),
        (["demo", "--count", "-5"], "--count", "from 1"),
    ]
    for args, flag, needle in cases:
        done = archiver(*args, cwd=tmp_path)
        one_line(done, 2, flag, needle)
    assert set(OPTION_RANGES) == {
        "limit",
        "max_pending_age",
        "max_expired_leases",
        "chunk_size",
        "port",
        "count",
    }


def test_a_key_that_cannot_be_a_header_is_refused_before_any_request(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("sk-first-line-0123456789\nsecond-line-abcdef\n")
    url = f"sqlite:///{tmp_path / 'archive.db'}"
    for env in ({"ARCHIVER_API_KEY": "ab\ncd-0123456789"}, {"ARCHIVER_API_KEY_FILE": str(key_file)}):
        done = archiver("run", "--once", "--database-url", url, cwd=tmp_path, env=env)
        line = one_line(done, 2, "line break")
        assert "second-line" not in line and "cd-0123456789" not in line
    assert not (tmp_path / "archive.db").exists()  # refused before the database was touched


def test_a_key_file_that_is_not_a_key_is_refused_without_reading_it_whole(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'archive.db'}"
    done = archiver(
        "run", "--once", "--database-url", url, cwd=tmp_path, env={"ARCHIVER_API_KEY_FILE": "/dev/zero"}
    )
    one_line(done, 2, "larger than 64 KiB")
    # Commands that do not need the key ignore a bad key file (it is only registered as a secret).
    listed = archiver("enqueue", "--database-url", url, cwd=tmp_path, input=b"resp_ok_1\n")
    assert listed.returncode == 0, listed.stderr


def test_an_empty_metrics_host_is_refused_not_every_interface(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'archive.db'}"
    done = archiver("run", "--metrics-host", "", "--metrics-port", "0", "--database-url", url, cwd=tmp_path)
    one_line(done, 2, "--metrics-host", "every interface")


def test_closed_stdout_and_stderr_at_start(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'archive.db'}"
    # stderr closed: the command still works (it has nowhere to complain, and need not).
    queued = subprocess.run(
        [sys.executable, "-m", "archiver", "enqueue", "--database-url", url],
        input=b"resp_ok_closed1\n",
        stdout=subprocess.PIPE,
        stderr=None,
        env=base_env(),
        cwd=tmp_path,
        timeout=TIMEOUT_S,
        check=False,
        preexec_fn=lambda: os.close(2),
    )
    assert queued.returncode == 0 and b"queued 1" in queued.stdout
    with sqlite3.connect(tmp_path / "archive.db") as conn:
        assert conn.execute("SELECT id FROM archive_queue").fetchall() == [("resp_ok_closed1",)]
    # stdout closed: the work is done, the lost output is one line and exit 1 (as GNU tools do).
    shown = archiver(
        "status", "--database-url", url, cwd=tmp_path, stdout=None, preexec_fn=lambda: os.close(1)
    )
    one_line(shown, 1, "stdout is closed")


def test_show_into_a_reader_that_leaves_is_exit_1(tmp_path: Path) -> None:
    """A body larger than a pipe holds: the reader's leaving is noticed (it was exit 0)."""
    db = tmp_path / "archive.db"
    url = f"sqlite:///{db}"
    body = b'{"id":"resp_big_pipe","object":"response","status":"completed","x":"' + b"y" * 1000000 + b'"}'
    (tmp_path / "bodies").mkdir()
    (tmp_path / "bodies" / "big.json").write_bytes(body)
    mock = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "archiver",
            "mock-server",
            "--port",
            "0",
            "--bodies-dir",
            str(tmp_path / "bodies"),
        ],
        stdout=subprocess.PIPE,
        env=base_env(),
        cwd=tmp_path,
    )
    try:
        assert mock.stdout is not None
        base_url = mock.stdout.readline().decode().split()[4]  # "mock Responses API at URL ..."
        archiver("enqueue", "--database-url", url, cwd=tmp_path, input=b"resp_big_pipe\n")
        ran = archiver("run", "--once", "--database-url", url, "--base-url", base_url, cwd=tmp_path)
        assert ran.returncode == 0, ran.stderr
    finally:
        mock.terminate()
        mock.wait(10)
        if mock.stdout is not None:
            mock.stdout.close()
    script = '"$@" | head -c1 >/dev/null; echo "${PIPESTATUS[0]}" >&2'
    shell = subprocess.run(
        ["bash", "-c", script, "pipe", sys.executable, "-m", "archiver", "show", "resp_big_pipe",
         "--database-url", url],
        capture_output=True, env=base_env(), cwd=tmp_path, timeout=TIMEOUT_S, check=False,
    )  # fmt: skip
    assert b"Traceback" not in shell.stderr, shell.stderr
    assert shell.stderr.strip().splitlines()[-1] == b"1", shell.stderr
    whole = archiver("show", "resp_big_pipe", "--database-url", url, cwd=tmp_path)
    assert whole.returncode == 0 and whole.stdout == body


def _wait_until_caught(pid: int, *signals: signal.Signals) -> None:
    """Wait until the process catches these signals (its SigCgt in /proc), at most 30 s.

    A signal sent before (while the interpreter itself starts) kills any Python program;
    a fixed sleep was not always enough on a loaded host.
    """
    wanted = sum(1 << (int(s) - 1) for s in signals)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = Path(f"/proc/{pid}/status").read_text()
        caught = int(next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1], 16)
        if caught & wanted == wanted:
            return
        time.sleep(0.005)
    raise AssertionError(f"process {pid} never caught {signals}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
def test_a_stop_signal_while_enqueue_starts_is_a_clean_stop(sig: signal.Signals, tmp_path: Path) -> None:
    """Sent while the command still imports and opens the database (it killed it, exit -15)."""
    db = tmp_path / "archive.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "archiver", "enqueue", "--database-url", f"sqlite:///{db}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=base_env(),
        cwd=tmp_path,
    )
    _wait_until_caught(proc.pid, signal.SIGTERM, signal.SIGHUP)  # archiver's first code ran
    proc.send_signal(sig)
    # Still starting: the deferral comes before the imports that open the database (without
    # it, only the command's own handlers, installed later, would catch these signals).
    assert not db.exists()
    out, err = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 0, (proc.returncode, err[-1500:])
    assert b"Traceback" not in err and b"queued 0" in out, (out, err)


def test_a_bad_export_cursor_is_exit_2_like_any_bad_value(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'archive.db'}"
    assert archiver("migrate", "--database-url", url, cwd=tmp_path).returncode == 0
    variable = archiver("export", str(tmp_path / "out"), "--database-url", url, cwd=tmp_path,
                        env={"ARCHIVER_EXPORT_CURSOR": "a/b"})  # fmt: skip
    one_line(variable, 2, "ARCHIVER_EXPORT_CURSOR='a/b'", "letters, digits")
    flag = archiver("export", str(tmp_path / "out"), "--cursor", "../up", "--database-url", url, cwd=tmp_path)
    one_line(flag, 2, "--cursor='../up'")
    assert not (tmp_path / "out").exists()
