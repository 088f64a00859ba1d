"""``run --once`` in a real terminal (a pty): log lines above the bar, right counts, one summary line.

The bytes the terminal received are checked after stripping ANSI codes. Each piece of
text between line feeds and carriage returns is what one draw put on a line, so a log
line written onto the bar's unfinished line shows as one piece with both in it.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time

import pytest

from .conftest import Cli
from .test_cli import FAST

pytestmark = pytest.mark.timeout(240)

ANSI = re.compile(
    rb"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[()][0-9A-Za-z]|\x1b[=>78]"
)
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")
BAR = re.compile(r"^\s*archiving\b.*?(\d+)/(\d+)")
SUMMARY = re.compile(r"^done ([\d,]+) of ([\d,]+) in [\d.]+s .*: archived ([\d,]+) \(unchanged ([\d,]+)\)")

IDS = (
    [f"resp_ok_t{i:05d}" for i in range(1950)]
    + [f"resp_flaky1_t{i:03d}" for i in range(30)]  # a 503 first: a warning while the bar runs
    + [f"resp_notfound_t{i:03d}" for i in range(10)]
    + [f"resp_garbage_t{i:03d}" for i in range(10)]  # retried, then failed
)


def run_in_terminal(cli: Cli, *args: str, timeout: float = 150, **env: str) -> tuple[int, str]:
    """Run the CLI with stdin, stdout and stderr on a pty 120 columns wide; (exit status, screen text)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "archiver", *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env={**cli.env, "TERM": "xterm-256color", **env},
        cwd=cli.cwd,
        start_new_session=True,
    )
    os.close(slave)
    received = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no exit within {timeout}s: {bytes(received[-2000:])!r}")
            ready, _, _ = select.select([master], [], [], min(left, 0.5))
            if not ready:
                continue
            try:
                data = os.read(master, 1 << 16)
            except OSError:  # EIO: the last writer closed the terminal
                break
            if not data:
                break
            received += data
        status = proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return status, ANSI.sub(b"", bytes(received)).decode("utf-8", "replace")


def pieces(screen: str) -> list[str]:
    """The text of each draw: split at line feeds and carriage returns, blanks dropped."""
    return [p for p in re.split(r"[\r\n]", screen) if p.strip()]


def check_screen(screen: str, total: int) -> tuple[re.Match[str], dict]:
    """What every terminal run must show; returns (the summary line's match, the JSON summary)."""
    drawn = pieces(screen)
    glued = [p for p in drawn if "archiving" in p and TIMESTAMP.search(p)]
    assert not glued, f"a log line glued to the bar: {glued[:3]}"
    bars = [i for i, p in enumerate(drawn) if BAR.search(p)]
    assert bars, f"no progress bar drawn: {drawn[:20]}"
    last_bar = drawn[bars[-1]]
    done, of = BAR.search(last_bar).groups()  # type: ignore[union-attr]
    assert (int(done), int(of)) == (total, total), last_bar
    assert "retrying 0" in last_bar, last_bar
    after = drawn[bars[-1] + 1 :]
    assert after and SUMMARY.search(after[0]), f"no summary line after the bar: {after[:3]}"
    summary_match = SUMMARY.search(after[0])
    assert summary_match is not None
    assert [int(summary_match.group(n).replace(",", "")) for n in (1, 2)] == [total, total]
    # After the summary line only the JSON summary on stdout: no more log lines.
    rest = "\n".join(after[1:])
    assert not TIMESTAMP.search(rest), rest[:500]
    return summary_match, json.loads(rest)


def test_a_terminal_run_keeps_logs_above_the_bar_and_counts_each_id_once(cli: Cli, mock_process: str) -> None:
    (cli.cwd / "ids.txt").write_text("\n".join(IDS) + "\n")
    assert cli("enqueue", "ids.txt").returncode == 0
    env = {**FAST, "ARCHIVER_BASE_URL": mock_process, "ARCHIVER_LOG_LEVEL": "info"}

    status, screen = run_in_terminal(cli, "run", "--once", **env)
    assert status == 0, screen[-3000:]
    assert "archiver.batch_written" not in screen
    assert "archiver.fetch_retry" in screen  # warnings are still printed, above the bar
    assert "archiver.run_started" in screen  # and info lines other than the per-batch one
    line, summary = check_screen(screen, len(IDS))
    assert summary["archived"] == 1980 and summary["not_found"] == 10 and summary["failed"] == 10
    assert summary["retried"] >= 30  # a running total; the bar showed "retrying 0" at the end

    # Fetched again: the bodies are identical, and each ID still counts once.
    assert cli("enqueue", "--refetch", "ids.txt").returncode == 0
    status, screen = run_in_terminal(cli, "run", "--once", **env)
    assert status == 0, screen[-3000:]
    line, summary = check_screen(screen, len(IDS))
    assert summary["archived"] == 1980 and summary["unchanged"] == 1980
    assert int(line.group(3).replace(",", "")) == 1980 and int(line.group(4).replace(",", "")) == 1980


def test_at_debug_level_the_per_batch_lines_are_printed_above_the_bar(
    sqlite_cli: Cli, mock_process: str
) -> None:
    ids = [f"resp_ok_d{i:04d}" for i in range(300)]
    sqlite_cli("enqueue", input="\n".join(ids).encode())
    status, screen = run_in_terminal(
        sqlite_cli,
        "run",
        "--once",
        "--batch-size",
        "20",
        ARCHIVER_BASE_URL=mock_process,
        ARCHIVER_LOG_LEVEL="debug",
        **{k: v for k, v in FAST.items() if k != "ARCHIVER_LOG_LEVEL"},
    )
    assert status == 0, screen[-3000:]
    assert screen.count("archiver.batch_written") >= 2
    check_screen(screen, len(ids))


def test_off_a_terminal_every_batch_is_still_logged(sqlite_cli: Cli, mock_process: str) -> None:
    sqlite_cli("enqueue", input=b"resp_ok_p1\nresp_ok_p2\n")
    out = sqlite_cli("run", "--once", ARCHIVER_BASE_URL=mock_process, ARCHIVER_LOG_LEVEL="info", **FAST)
    assert out.returncode == 0, out.stderr
    events = [json.loads(line)["event"] for line in out.stderr.decode().splitlines()]
    assert "archiver.batch_written" in events and events[-1] == "archiver.run_stopped"
    assert json.loads(out.stdout)["archived"] == 2
