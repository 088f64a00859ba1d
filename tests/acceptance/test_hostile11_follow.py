"""``archiver enqueue --follow`` against logs as real applications and logrotate leave them.

An application that writes its log at its own offset (a shell's ``app > app.log``, any
writer opened without ``O_APPEND``) goes on writing at that offset after logrotate's
``copytruncate``: the file gets a hole of NUL bytes from byte 0 to there, then the new
lines. A crash can leave such a hole in the middle of a log too. The real CLI in a
subprocess, real files, SQLite.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import Cli
from .test_enqueue_stream import _query, procs, queued, start, stop, wait_until

__all__ = ["procs"]  # the fixture, imported to be used here

pytestmark = pytest.mark.timeout(90)


def _ids(prefix: str, count: int) -> list[str]:
    return [f"resp_{prefix}{i:04d}" for i in range(count)]


def _write(fd: int, ids: list[str]) -> None:
    for rid in ids:
        os.write(fd, f"{rid}\n".encode())


def _followed_writer(cli: Cli, log: Path, procs: list, ids: list[str]) -> tuple[int, subprocess.Popen[bytes]]:
    """The application's log, opened once without O_APPEND (as ``app > app.log`` does), its
    first lines written, and a follower that queued them."""
    assert cli("migrate").returncode == 0
    writer = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    _write(writer, ids)
    proc = start(cli, "--follow", str(log), stdin=subprocess.DEVNULL)
    procs.append(proc)
    wait_until(lambda: set(ids) <= queued(cli.env["ARCHIVER_DATABASE_URL"]), 30, "the first lines")
    return writer, proc


def _followed_log(cli: Cli, log: Path, procs: list, ids: list[str]) -> subprocess.Popen[bytes]:
    """A log holding ``ids`` and a follower that queued them."""
    assert cli("migrate").returncode == 0
    log.write_bytes(_lines(ids))
    proc = start(cli, "--follow", str(log), stdin=subprocess.DEVNULL)
    procs.append(proc)
    wait_until(lambda: set(ids) <= queued(cli.env["ARCHIVER_DATABASE_URL"]), 30, "the first lines")
    return proc


def _copytruncate(log: Path, copy: Path) -> None:
    shutil.copyfile(log, copy)
    os.truncate(log, 0)


def _expect_every_line(cli: Cli, proc: subprocess.Popen[bytes], everything: set[str], timeout: float) -> None:
    """Wait until every ID in ``everything`` is queued, stop ``proc``, and name what was lost."""
    db_url = cli.env["ARCHIVER_DATABASE_URL"]
    try:
        wait_until(lambda: everything <= queued(db_url), timeout, "every line")
    finally:
        code, out, err = stop(proc)
        lost = sorted(everything - queued(db_url))
        assert not lost, f"{len(lost)} of {len(everything)} never queued: {lost[:3]}...; {out} {err[-500:]}"
    assert code == 0 and "Traceback" not in err, err


def test_lines_after_a_copytruncate_hole_are_queued(sqlite_cli: Cli, tmp_path: Path, procs: list) -> None:
    db_url = sqlite_cli.env["ARCHIVER_DATABASE_URL"]
    log = tmp_path / "app.log"
    before = _ids("before", 100)
    writer, proc = _followed_writer(sqlite_cli, log, procs, before)
    try:
        _copytruncate(log, tmp_path / "app.log.1")
        after = _ids("after", 50)
        _write(writer, after)  # at the writer's offset: bytes 0..offset are now NULs
        assert log.read_bytes().startswith(b"\0" * 100)

        wait_until(lambda: set(after) <= queued(db_url), 10, "the lines written after the copytruncate")
    finally:
        os.close(writer)
    code, out, err = stop(proc)
    assert code == 0, err
    assert out.strip() == "queued 150, already known 0, rejected 0", (out, err)
    assert "Traceback" not in err


def test_a_hole_in_the_middle_of_a_followed_log_neither_stops_it_nor_joins_lines(
    sqlite_cli: Cli, tmp_path: Path, procs: list
) -> None:
    """A crash left NULs after a cut line; the application went on writing after them.

    The cut line is rejected, never glued to the next one (``resp_cut`` + ``resp_next``
    would be a valid ID), and a hole longer than the 1 MiB line limit is no long line.
    """
    db_url = sqlite_cli.env["ARCHIVER_DATABASE_URL"]
    assert sqlite_cli("migrate").returncode == 0
    log = tmp_path / "app.log"
    log.write_bytes(
        b"resp_h1\nresp_cut" + b"\0" * 3000 + b"resp_h2\nresp_h3\n" + b"\0" * (3 << 20) + b"resp_h4\n"
    )
    proc = start(sqlite_cli, "--follow", str(log), stdin=subprocess.DEVNULL)
    procs.append(proc)
    wait_until(lambda: "resp_h4" in queued(db_url), 10, "the line after the 3 MiB hole")
    with open(log, "ab") as f:
        f.write(b"resp_h5\n")
    wait_until(lambda: "resp_h5" in queued(db_url), 5, "a line appended after the holes")
    code, out, err = stop(proc)
    assert code == 0, err
    assert queued(db_url) == {"resp_h1", "resp_h2", "resp_h3", "resp_h4", "resp_h5"}
    assert out.strip() == "queued 5, already known 0, rejected 1", (out, err)
    assert "resp_cut" in err and "Traceback" not in err

    # The saved position is past the holes: a restart reads only what is new.
    with open(log, "ab") as f:
        f.write(b"\0" * 100 + b"resp_h6\n")
    again = start(sqlite_cli, "--follow", str(log), stdin=subprocess.DEVNULL)
    procs.append(again)
    wait_until(lambda: "resp_h6" in queued(db_url), 30, "the line after a restart")
    code, out, err = stop(again)
    assert code == 0 and out.strip() == "queued 1, already known 0, rejected 0", (out, err)


# --- copytruncate and rotation around a stop ---------------------------------------------


def _follow_row(db_url: str) -> tuple:
    rows = _query(db_url, "SELECT byte_offset, inode FROM archive_follow")
    assert len(rows) == 1, rows
    return rows[0]


def _read_position(pid: int, path: Path) -> int | None:
    """The file offset of ``pid``'s descriptor open on ``path`` (from /proc), or None."""
    fds = Path(f"/proc/{pid}/fd")
    for fd in fds.iterdir():
        try:
            if os.readlink(fd) == str(path):
                text = (Path(f"/proc/{pid}/fdinfo") / fd.name).read_text()
                return int(text.split("pos:")[1].split()[0])
        except OSError:
            continue
    return None


def _lines(ids: list[str]) -> bytes:
    return "".join(f"{rid}\n" for rid in ids).encode()


def test_a_file_saved_at_its_start_then_copytruncated_and_renamed_while_down_loses_no_line(
    sqlite_cli: Cli, tmp_path: Path, procs: list
) -> None:
    """Saved at byte 0 (nothing read yet); while the follower is down the file gets lines,
    logrotate copytruncates it (app.log.1 holds them), it gets more lines and is then
    renamed by a rotation (app.log.2) with a new file at the path. Found by its inode at
    app.log.2, it is newer than the copy: the copy was never read."""
    db_url = sqlite_cli.env["ARCHIVER_DATABASE_URL"]
    assert sqlite_cli("migrate").returncode == 0
    log = tmp_path / "app.log"
    log.write_bytes(b"")
    proc = start(sqlite_cli, "--follow", str(log), stdin=subprocess.DEVNULL)
    procs.append(proc)
    wait_until(lambda: bool(_query(db_url, "SELECT 1 FROM archive_follow")), 30, "the position at byte 0")
    code, _out, err = stop(proc)
    assert code == 0 and _follow_row(db_url)[0] == 0, err

    copied, kept, new = _ids("copied", 20), _ids("kept", 20), _ids("new", 20)
    with open(log, "ab") as f:
        f.write(_lines(copied))
    shutil.copyfile(log, tmp_path / "app.log.1")
    os.truncate(log, 0)
    with open(log, "ab") as f:
        f.write(_lines(kept))
    now = time.time()
    os.utime(tmp_path / "app.log.1", (now - 1, now - 1))  # the copy is older than the file
    os.rename(log, tmp_path / "app.log.2")
    log.write_bytes(_lines(new))

    again = start(sqlite_cli, "--follow", str(log), stdin=subprocess.DEVNULL)
    procs.append(again)
    _expect_every_line(sqlite_cli, again, set(copied + kept + new), 10)


def test_a_copytruncate_between_a_read_and_its_commit_loses_no_line(
    sqlite_cli: Cli, tmp_path: Path, procs: list
) -> None:
    """The follower has read new lines and not committed them yet (it commits 0.5 s after
    the first); logrotate copytruncates the log and the application writes more; then the
    stop commits. The position must describe the bytes read, not the file rewritten since."""
    db_url = sqlite_cli.env["ARCHIVER_DATABASE_URL"]
    log = tmp_path / "app.log"
    first = _ids("first", 10)
    proc = _followed_log(sqlite_cli, log, procs, first)
    wait_until(lambda: _follow_row(db_url)[0] == log.stat().st_size, 5, "their position")

    read_not_committed, copied, rewritten = _ids("read", 4), _ids("copied", 30), _ids("rewritten", 60)
    with open(log, "ab") as f:
        f.write(_lines(read_not_committed))
    size = log.stat().st_size
    wait_until(lambda: _read_position(proc.pid, log) == size, 5, "the follower read the new lines")
    os.kill(proc.pid, signal.SIGSTOP)  # before its commit, 0.5 s after the read
    try:
        with open(log, "ab") as f:
            f.write(_lines(copied))  # written after the read, before the copy: only in the copy
        shutil.copyfile(log, tmp_path / "app.log.1")
        os.truncate(log, 0)
        with open(log, "ab") as f:
            f.write(_lines(rewritten))  # longer than what was read
        proc.send_signal(signal.SIGTERM)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    _out, errb = proc.communicate(timeout=20)  # no second SIGTERM: that one exits at once
    assert proc.returncode == 0, errb.decode()

    again = start(sqlite_cli, "--follow", str(log), stdin=subprocess.DEVNULL)
    procs.append(again)
    _expect_every_line(sqlite_cli, again, set(first + read_not_committed + copied + rewritten), 10)


# --- what the operator typed -----------------------------------------------------------


def test_follow_dash_is_refused_instead_of_waiting_for_a_file_named_dash(sqlite_cli: Cli) -> None:
    """``app | archiver enqueue --follow -``: ``-`` is stdin for ``enqueue``; followed, it
    was a file name in the working directory, and the piped IDs were never read."""
    assert sqlite_cli("migrate").returncode == 0
    done = sqlite_cli("enqueue", "--follow", "-", input=b"resp_piped\n", timeout=20)
    err = done.stderr.decode()
    assert done.returncode == 2, (done.returncode, err)
    assert "--follow" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_a_followed_path_that_does_not_exist_is_named_once_then_followed_when_it_appears(
    sqlite_cli: Cli, tmp_path: Path, procs: list
) -> None:
    """A typo in the path (or a log not created yet) used to wait without a word."""
    db_url = sqlite_cli.env["ARCHIVER_DATABASE_URL"]
    assert sqlite_cli("migrate").returncode == 0
    log = tmp_path / "later" / "app.log"
    proc = start(sqlite_cli, "--follow", str(log), stdin=subprocess.DEVNULL)
    procs.append(proc)
    time.sleep(3)
    (tmp_path / "later").mkdir()
    log.write_bytes(b"resp_late\n")
    wait_until(lambda: "resp_late" in queued(db_url), 10, "the line of the file once it exists")
    code, out, err = stop(proc)
    assert code == 0 and out.strip() == "queued 1, already known 0, rejected 0", (out, err)
    assert err.count(str(log)) == 1 and "does not exist" in err, err


def _has_open(pid: int, path: Path) -> bool:
    fds = Path(f"/proc/{pid}/fd")
    for fd in fds.iterdir():
        try:
            if os.readlink(fd) == str(path):
                return True
        except OSError:
            continue
    return False


def test_a_copytruncate_while_a_restart_reads_its_backlog_loses_no_line(
    sqlite_cli: Cli, tmp_path: Path, procs: list
) -> None:
    """Back after a rotation, the follower reads the rest of the old file (large: it was
    down a while), then the new file at the path, opened when the restart looked. While
    it reads the old one, logrotate copytruncates the new one: its lines so far are only
    in the copy, and the file it holds open starts again at byte 0."""
    log = tmp_path / "app.log"
    first = _ids("first", 5)
    proc = _followed_log(sqlite_cli, log, procs, first)
    code, _out, err = stop(proc)
    assert code == 0, err

    backlog = _ids("backlog", 200_000)  # read for seconds after the restart
    with open(log, "ab") as f:
        f.write(_lines(backlog))
    os.rename(log, tmp_path / "app.log.1")
    in_new = _ids("new", 30)
    log.write_bytes(_lines(in_new))

    again = start(sqlite_cli, "--follow", str(log), stdin=subprocess.DEVNULL)
    procs.append(again)
    wait_until(lambda: _has_open(again.pid, log), 30, "the restart opened the new file")
    old_size = (tmp_path / "app.log.1").stat().st_size
    assert (_read_position(again.pid, tmp_path / "app.log.1") or 0) < old_size, "read the old file already"
    shutil.copyfile(log, tmp_path / "app.log.0")  # copytruncate
    os.truncate(log, 0)
    after = _ids("after", 30)
    with open(log, "ab") as f:
        f.write(_lines(after))

    _expect_every_line(sqlite_cli, again, set(first + backlog + in_new + after), 60)


def test_a_position_just_past_a_hole_is_not_taken_for_a_later_hole(
    sqlite_cli: Cli, tmp_path: Path, procs: list
) -> None:
    """A writer without O_APPEND, copytruncated twice. After the first, the follower reads
    the hole and an unfinished line and saves its position. While it is down, the line is
    finished, more lines come, and the second copytruncate moves them to app.log.2; the
    writer goes on past them. The file again starts with NUL bytes, as many as before and
    more: a position whose fingerprint is 256 NUL bytes matched it, and app.log.2 was
    never read."""
    log = tmp_path / "app.log"
    first = _ids("first", 50)
    writer, proc = _followed_writer(sqlite_cli, log, procs, first)
    try:
        _copytruncate(log, tmp_path / "app.log.1")
        os.write(writer, b"resp_cont")  # after the hole, unfinished
        size = log.stat().st_size
        wait_until(lambda: _read_position(proc.pid, log) == size, 10, "the follower read the hole")
        time.sleep(1.5)  # its commits
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)

        second = _ids("second", 40)
        os.write(writer, b"inued\n")
        _write(writer, second)
        _copytruncate(log, tmp_path / "app.log.2")
        third = _ids("third", 20)
        _write(writer, third)
    finally:
        os.close(writer)

    again = start(sqlite_cli, "--follow", str(log), stdin=subprocess.DEVNULL)
    procs.append(again)
    _expect_every_line(sqlite_cli, again, {*first, "resp_continued", *second, *third}, 10)
