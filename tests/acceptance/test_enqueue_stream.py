"""``archiver enqueue`` on live input: pipes kept open, FIFOs, signals, binary and hostile
input, and ``--follow`` through rotation, truncation and restarts. The real CLI in a
subprocess, real pipes and files, real signals, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from archiver.db import create_engine
from tests.peak_rss import measured, peak_bytes

from .conftest import Cli

pytestmark = pytest.mark.timeout(90)


def _query(db_url: str, sql: str) -> list[tuple]:
    async def read() -> list[tuple]:
        engine = create_engine(db_url)
        try:
            async with engine.connect() as conn:
                return [tuple(row) for row in await conn.execute(text(sql))]
        finally:
            await engine.dispose()

    return asyncio.run(read())


def queued(db_url: str) -> set[str]:
    return {row[0] for row in _query(db_url, "SELECT id FROM archive_queue")}


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``check`` until true; return the seconds it took."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)
    return time.monotonic() - start


def start(cli: Cli, *args: str, stdin: int | None = subprocess.PIPE) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "archiver", "enqueue", *args],
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli.env,
        cwd=cli.cwd,
    )


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test started; any still running at the end are killed (by their pid)."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> tuple[int, str, str]:
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=20)
    return proc.returncode, out.decode(), err.decode()


# --- pipes and FIFOs --------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_piped_lines_are_committed_within_a_second_and_a_signal_keeps_them(
    cli: Cli, db_url: str, procs: list, sig: int
) -> None:
    if sig == signal.SIGHUP and signal.getsignal(signal.SIGHUP) == signal.SIG_IGN:
        pytest.skip("the tests run under nohup: the CLI rightly keeps ignoring SIGHUP")
    assert cli("migrate").returncode == 0
    proc = start(cli)
    procs.append(proc)
    assert proc.stdin is not None
    # The first ID shows the process is up (imports, database): what follows is timed.
    proc.stdin.write(b"resp_warm_up\n")
    proc.stdin.flush()
    wait_until(lambda: "resp_warm_up" in queued(db_url), 30, "the first piped ID")
    ids = [f"resp_pipe_{i}" for i in range(5)]
    proc.stdin.write("".join(f"{i}\n" for i in ids).encode())
    proc.stdin.flush()
    took = wait_until(lambda: set(ids) <= queued(db_url), 5, "5 piped IDs committed")
    assert took < 1.5, took
    # The pipe is still open (no end of input): the signal ends the command.
    code, out, err = stop(proc, sig)
    assert code == 0, err
    assert out.strip() == "queued 6, already known 0, rejected 0"
    assert "Traceback" not in err
    assert set(ids) | {"resp_warm_up"} == queued(db_url)


def _open_writer(fifo: Path, timeout: float = 30) -> int:
    """Open the FIFO for writing once the CLI has opened it for reading."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: no reader yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_sigint_on_a_fifo_while_the_read_is_blocked_commits_and_exits_0(
    cli: Cli, db_url: str, tmp_path: Path, procs: list
) -> None:
    fifo = tmp_path / "ids.fifo"
    os.mkfifo(fifo)
    proc = start(cli, str(fifo), stdin=subprocess.DEVNULL)
    procs.append(proc)
    writer = _open_writer(fifo)
    try:
        os.write(writer, b"resp_fifo_1\nresp_fifo_2\nresp_fifo_3\n")
        time.sleep(0.2)  # read by now, not yet due (COMMIT_AFTER_S): the signal commits it
        code, out, err = stop(proc, signal.SIGINT)  # the writer is open and idle: a blocked read
    finally:
        os.close(writer)
    assert code == 0, err
    assert out.strip() == "queued 3, already known 0, rejected 0"
    assert "Traceback" not in err and "interrupted" not in err
    assert queued(db_url) == {"resp_fifo_1", "resp_fifo_2", "resp_fifo_3"}


def has_open(pid: int, path: Path) -> bool:
    """True when process ``pid`` holds a file descriptor on ``path``."""
    for fd in Path(f"/proc/{pid}/fd").glob("*"):
        try:
            if os.readlink(fd) == str(path):
                return True
        except OSError:  # closed meanwhile
            continue
    return False


def test_sigint_before_any_writer_opens_the_fifo(cli: Cli, db_url: str, tmp_path: Path, procs: list) -> None:
    fifo = tmp_path / "ids.fifo"
    os.mkfifo(fifo)
    assert cli("migrate").returncode == 0
    proc = start(cli, str(fifo), stdin=subprocess.DEVNULL)
    procs.append(proc)
    # Started, and waiting for a writer that never comes (a fixed 3 s sleep was too short
    # for the start-up on a loaded machine: the signal then interrupted the imports).
    wait_until(lambda: has_open(proc.pid, fifo), 60, "the CLI to open the FIFO")
    code, out, err = stop(proc, signal.SIGINT)
    assert code == 0, err
    assert out.strip() == "queued 0, already known 0, rejected 0"
    assert "Traceback" not in err


# --- hostile input ------------------------------------------------------------------------


def test_dev_zero_is_refused_as_binary_at_once(cli: Cli) -> None:
    began = time.monotonic()
    out = cli("enqueue", "/dev/zero", timeout=30)
    assert time.monotonic() - began < 20
    err = out.stderr.decode()
    assert out.returncode == 1, err
    assert "binary input" in err and "/dev/zero" in err
    assert len(err.splitlines()) <= 3, err
    assert "Traceback" not in err


def test_random_bytes_on_stdin_are_refused_with_a_few_lines(cli: Cli, procs: list) -> None:
    with open("/dev/urandom", "rb") as endless:
        proc = start(cli, stdin=endless.fileno())
        procs.append(proc)
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert b"binary input" in err and b"Traceback" not in err
    assert len(err) < 4000 and len(err.splitlines()) <= 10, err


def test_only_the_first_100_rejected_lines_are_printed(cli: Cli) -> None:
    lines = "".join(f"bad id {i}\n" for i in range(200)) + "resp_good_1\n"
    out = cli("enqueue", input=lines.encode())
    assert out.returncode == 1
    err = [line for line in out.stderr.decode().splitlines() if "created a new archive" not in line]
    rejected = [line for line in err if ": rejected: " in line]
    assert len(rejected) == 100
    assert rejected[0].startswith("<stdin>:1: rejected:") and rejected[-1].startswith(
        "<stdin>:100: rejected:"
    )
    assert len(err) == 101 and "only counted" in err[-1], err[-3:]
    assert out.stdout.decode().strip() == "queued 1, already known 0, rejected 200 (100 not printed)"


def _peak_rss_mb(cli: Cli, path: Path) -> tuple[float, subprocess.CompletedProcess[bytes]]:
    """Run ``enqueue PATH``; its own peak RSS in MiB (tests/peak_rss.py)."""
    report = cli.cwd / f"peak-rss-{path.name}"
    done = subprocess.run(
        measured([sys.executable, "-m", "archiver", "enqueue", str(path)], report),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=cli.env,
        cwd=cli.cwd,
        timeout=120,
        check=False,
    )
    return peak_bytes(report) / 2**20, done


def test_a_5_mb_line_is_rejected_without_holding_it(cli: Cli, tmp_path: Path) -> None:
    assert cli("migrate").returncode == 0
    small = tmp_path / "small.txt"
    small.write_bytes(b"resp_small_1\n")
    huge = tmp_path / "huge.txt"
    size = 5 * 1024 * 1024
    huge.write_bytes(b"resp_huge_1\n" + b"x" * size + b"\nresp_huge_2\n")
    base_mb, _ = _peak_rss_mb(cli, small)
    peak_mb, out = _peak_rss_mb(cli, huge)
    err = out.stderr.decode()
    assert out.returncode == 1, err
    assert f"huge.txt:2: rejected: line longer than 1 MiB ({size} bytes)" in err
    assert out.stdout.decode().strip() == "queued 2, already known 0, rejected 1"
    # Held: a 256 KiB read and at most 1 MiB of an unfinished line. Holding the line whole
    # (as bytes, text, a stripped copy) costs several times 5 MB.
    assert peak_mb - base_mb < 6, (base_mb, peak_mb)
    assert 10 < base_mb < 300, base_mb  # the command's own figure, not the pytest worker's


# --- --follow -----------------------------------------------------------------------------


def follow_row(db_url: str, log: Path) -> tuple:
    rows = _query(db_url, f"SELECT byte_offset, line_no FROM archive_follow WHERE path = '{log}'")
    assert len(rows) == 1, rows
    return rows[0]


def test_follow_waits_for_whole_lines_and_survives_rotation_and_truncation(
    cli: Cli, db_url: str, tmp_path: Path, procs: list
) -> None:
    assert cli("migrate").returncode == 0
    log = tmp_path / "app.log"
    log.write_bytes(b'resp_f1\n{"id": "resp_f2", "level": "info"}\nresp_f3_part')
    proc = start(cli, "--follow", str(log), stdin=subprocess.DEVNULL)
    procs.append(proc)
    wait_until(lambda: {"resp_f1", "resp_f2"} <= queued(db_url), 30, "the lines already in the log")
    time.sleep(1.0)
    assert queued(db_url) == {"resp_f1", "resp_f2"}, "a line without its newline was consumed"
    with open(log, "ab") as f:
        f.write(b"ial\n")
    took = wait_until(lambda: "resp_f3_partial" in queued(db_url), 5, "the completed line")
    assert took < 1.5, took

    # logrotate (create): rename, the application writes on to the renamed file a little
    # longer, then reopens the path.
    os.rename(log, tmp_path / "app.log.1")
    with open(tmp_path / "app.log.1", "ab") as old:
        old.write(b"resp_f4_late_in_old\n")
    time.sleep(0.5)
    log.write_bytes(b"resp_f5_new_file\n# a comment that makes this file longer than what follows\n")
    wait_until(
        lambda: {"resp_f4_late_in_old", "resp_f5_new_file"} <= queued(db_url), 5, "both sides of a rotation"
    )

    # logrotate copytruncate: the path keeps its inode and starts again at byte 0.
    time.sleep(0.6)
    with open(log, "r+b") as f:
        f.truncate(0)
    with open(log, "ab") as f:
        f.write(b"resp_f6_after_truncate\n")
    wait_until(lambda: "resp_f6_after_truncate" in queued(db_url), 5, "the line after the truncation")

    code, out, err = stop(proc)
    assert code == 0, err
    assert out.strip() == "queued 6, already known 0, rejected 0"
    assert "Traceback" not in err
    assert follow_row(db_url, log) == (len(b"resp_f6_after_truncate\n"), 2)


def test_follow_restart_neither_loses_nor_rereads(cli: Cli, db_url: str, tmp_path: Path, procs: list) -> None:
    assert cli("migrate").returncode == 0
    log = tmp_path / "app.log"
    log.write_bytes(b"resp_r1\nresp_r2\nresp_r3\nresp_r4")  # r4: no newline yet
    first = start(cli, "--follow", str(log), stdin=subprocess.DEVNULL)
    procs.append(first)
    wait_until(lambda: {"resp_r1", "resp_r2", "resp_r3"} <= queued(db_url), 30, "the first run's lines")
    code, out, err = stop(first)
    assert code == 0 and out.strip() == "queued 3, already known 0, rejected 0", (out, err)
    assert follow_row(db_url, log) == (len(b"resp_r1\nresp_r2\nresp_r3\n"), 4)

    # While it is down: r4 gets its newline, more lines come.
    with open(log, "ab") as f:
        f.write(b"_done\nresp_r5\n")
    second = start(cli, "--follow", str(log), stdin=subprocess.DEVNULL)
    procs.append(second)
    wait_until(lambda: {"resp_r4_done", "resp_r5"} <= queued(db_url), 30, "lines written while it was down")
    code, out, err = stop(second)
    # "already known 0": nothing the first run read was read again.
    assert code == 0 and out.strip() == "queued 2, already known 0, rejected 0", (out, err)

    # Rotated while it is down: the rest of the old file (found by its inode) comes first.
    os.rename(log, tmp_path / "app.log.1")
    with open(tmp_path / "app.log.1", "ab") as old:
        old.write(b"resp_r6_old_tail\n")
    log.write_bytes(b"resp_r7_new\n")
    third = start(cli, "--follow", str(log), stdin=subprocess.DEVNULL)
    procs.append(third)
    wait_until(
        lambda: {"resp_r6_old_tail", "resp_r7_new"} <= queued(db_url), 30, "both files after a restart"
    )
    code, out, err = stop(third)
    assert code == 0 and out.strip() == "queued 2, already known 0, rejected 0", (out, err)
    assert "Traceback" not in err
    assert len(queued(db_url)) == 7


def _lines(prefix: str, *numbers: int) -> bytes:
    return "".join(f"resp_{prefix}{n}\n" for n in numbers).encode()


def _ids(prefix: str, *numbers: int) -> set[str]:
    return {f"resp_{prefix}{n}" for n in numbers}


def test_follow_down_across_two_rotations_reads_every_file_once(
    cli: Cli, db_url: str, tmp_path: Path, procs: list
) -> None:
    assert cli("migrate").returncode == 0
    log, first_rotation, second_rotation = (tmp_path / name for name in ("app.log", "app.log.1", "app.log.2"))
    log.write_bytes(_lines("a", 1, 2, 3))
    (tmp_path / "app.log.9").write_bytes(_lines("old", 1))  # rotated before the first run: not read
    (tmp_path / "other.log").write_bytes(_lines("other", 1))  # another log in the directory: not read
    os.utime(tmp_path / "app.log.9", (1, 1))
    first = start(cli, "--follow", str(log), stdin=subprocess.DEVNULL)
    procs.append(first)
    wait_until(lambda: _ids("a", 1, 2, 3) <= queued(db_url), 30, "the first run's lines")
    code, out, err = stop(first)
    assert code == 0 and out.strip() == "queued 3, already known 0, rejected 0", (out, err)

    # While it is down, logrotate runs twice (a day apart: distinct modification times).
    with open(log, "ab") as f:
        f.write(_lines("a", 4, 5, 6))
    time.sleep(0.05)
    os.rename(log, first_rotation)
    log.write_bytes(_lines("b", 1, 2, 3))
    time.sleep(0.05)
    os.rename(first_rotation, second_rotation)
    os.rename(log, first_rotation)
    (tmp_path / "app.log.3.gz").write_bytes(b"\x1f\x8b compressed by logrotate")
    time.sleep(0.05)
    log.write_bytes(_lines("c", 1, 2, 3))

    second = start(cli, "--follow", str(log), stdin=subprocess.DEVNULL)
    procs.append(second)
    wanted = _ids("a", 1, 2, 3, 4, 5, 6) | _ids("b", 1, 2, 3) | _ids("c", 1, 2, 3)
    wait_until(lambda: wanted <= queued(db_url), 30, "the rest of A, all of B, then C")

    # Two more rotations within one poll while it runs: D lives at the path for microseconds.
    time.sleep(0.5)
    os.rename(second_rotation, tmp_path / "app.log.4")
    os.rename(first_rotation, second_rotation)
    os.rename(log, first_rotation)
    log.write_bytes(_lines("d", 1, 2))
    os.rename(second_rotation, tmp_path / "app.log.3")
    os.rename(first_rotation, second_rotation)
    os.rename(log, first_rotation)
    log.write_bytes(_lines("e", 1, 2))
    wanted |= _ids("d", 1, 2) | _ids("e", 1, 2)
    wait_until(lambda: wanted <= queued(db_url), 10, "both files of a double rotation")

    code, out, err = stop(second)
    # Exactly once: nothing the first run read, nor anything of this run, was read twice.
    assert code == 0 and out.strip() == "queued 13, already known 0, rejected 0", (out, err)
    assert "app.log.3.gz: a compressed rotation cannot be followed" in err
    assert "Traceback" not in err
    assert queued(db_url) == wanted
    assert follow_row(db_url, log) == (len(_lines("e", 1, 2)), 3)


def test_follow_sees_a_copytruncate_whose_new_content_passes_the_read_position(
    cli: Cli, db_url: str, tmp_path: Path, procs: list
) -> None:
    assert cli("migrate").returncode == 0
    log, copy, older_copy = (tmp_path / name for name in ("app.log", "app.log.1", "app.log.2"))
    log.write_bytes(_lines("x", 1, 2, 3))
    proc = start(cli, "--follow", str(log), stdin=subprocess.DEVNULL)
    procs.append(proc)
    wait_until(lambda: _ids("x", 1, 2, 3) <= queued(db_url), 30, "the lines already in the log")
    time.sleep(0.3)
    # Within one poll: two more lines (not read yet: in the copy only), logrotate
    # copytruncate, then the application writes more than was read, so the file never
    # looks shorter than the read position.
    with open(log, "ab") as f:
        f.write(_lines("x", 4, 5))
    shutil.copyfile(log, copy)
    with open(log, "r+b") as f:
        f.truncate(0)
    with open(log, "ab") as f:
        f.write(_lines("y", 1, 2, 3, 4, 5, 6))
    wanted = _ids("x", 1, 2, 3, 4, 5) | _ids("y", 1, 2, 3, 4, 5, 6)
    wait_until(lambda: wanted <= queued(db_url), 5, "the copy's last lines, then the truncated file")
    time.sleep(0.5)
    code, out, err = stop(proc)
    assert code == 0 and out.strip() == "queued 11, already known 0, rejected 0", (out, err)
    assert queued(db_url) == wanted
    assert follow_row(db_url, log) == (len(_lines("y", 1, 2, 3, 4, 5, 6)), 7)

    # copytruncate while it is down: the line written before it is in the copy only.
    with open(log, "ab") as f:
        f.write(_lines("y", 7))
    os.rename(copy, older_copy)
    shutil.copyfile(log, copy)
    with open(log, "r+b") as f:
        f.truncate(0)
    with open(log, "ab") as f:
        f.write(_lines("z", 1, 2))
    again = start(cli, "--follow", str(log), stdin=subprocess.DEVNULL)
    procs.append(again)
    wanted |= _ids("y", 7) | _ids("z", 1, 2)
    wait_until(lambda: wanted <= queued(db_url), 30, "the copy's rest, then the truncated file")
    code, out, err = stop(again)
    assert code == 0 and out.strip() == "queued 3, already known 0, rejected 0", (out, err)
    assert "Traceback" not in err
    assert queued(db_url) == wanted


def _copytruncate(log: Path) -> None:
    """logrotate copytruncate with ``rotate 9``: shift the copies, copy, truncate."""
    for k in range(8, 0, -1):
        if (log.parent / f"app.log.{k}").exists():
            os.rename(log.parent / f"app.log.{k}", log.parent / f"app.log.{k + 1}")
    shutil.copyfile(log, log.parent / "app.log.1")
    os.truncate(log, 0)


def test_follow_finds_the_copy_of_a_file_it_had_read_nothing_of(
    cli: Cli, db_url: str, tmp_path: Path, procs: list
) -> None:
    """After a truncation the follower is at byte 0: a second copytruncate leaves no bytes to compare."""
    assert cli("migrate").returncode == 0
    log = tmp_path / "app.log"
    log.write_bytes(_lines("p", 1, 2))
    proc = start(cli, "--follow", str(log), stdin=subprocess.DEVNULL)
    procs.append(proc)
    wait_until(lambda: _ids("p", 1, 2) <= queued(db_url), 30, "the lines already in the log")
    _copytruncate(log)
    time.sleep(0.6)  # seen: the follower now waits at byte 0 of the empty file
    with open(log, "ab") as f:
        f.write(_lines("q", 1, 2))
    _copytruncate(log)  # within one poll: q1, q2 are in the copy only
    time.sleep(0.1)
    with open(log, "ab") as f:
        f.write(_lines("q", 3))
    wanted = _ids("p", 1, 2) | _ids("q", 1, 2, 3)
    wait_until(lambda: wanted <= queued(db_url), 5, "the copy of the file read from nothing, then the file")
    _copytruncate(log)
    wait_until(lambda: follow_row(db_url, log)[0] == 0, 5, "the position saved at byte 0")
    code, out, err = stop(proc)
    assert code == 0 and out.strip() == "queued 5, already known 0, rejected 0", (out, err)

    # Saved at byte 0, then written and copytruncated while it is down.
    with open(log, "ab") as f:
        f.write(_lines("r", 1))
    _copytruncate(log)
    with open(log, "ab") as f:
        f.write(_lines("r", 2))
    again = start(cli, "--follow", str(log), stdin=subprocess.DEVNULL)
    procs.append(again)
    wanted |= _ids("r", 1, 2)
    wait_until(lambda: wanted <= queued(db_url), 30, "the copy made while it was down, then the file")
    code, out, err = stop(again)
    assert code == 0 and "Traceback" not in err, err
    assert out.strip().startswith("queued 2, already known"), out  # recent copies may be read again
    assert queued(db_url) == wanted
