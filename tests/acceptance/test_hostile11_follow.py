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
import subprocess
from pathlib import Path

import pytest

from .conftest import Cli
from .test_enqueue_stream import procs, queued, start, stop, wait_until

__all__ = ["procs"]  # the fixture, imported to be used here

pytestmark = pytest.mark.timeout(90)


def _ids(prefix: str, count: int) -> list[str]:
    return [f"resp_{prefix}{i:04d}" for i in range(count)]


def _write(fd: int, ids: list[str]) -> None:
    for rid in ids:
        os.write(fd, f"{rid}\n".encode())


def test_lines_after_a_copytruncate_hole_are_queued(sqlite_cli: Cli, tmp_path: Path, procs: list) -> None:
    db_url = sqlite_cli.env["ARCHIVER_DATABASE_URL"]
    assert sqlite_cli("migrate").returncode == 0
    log = tmp_path / "app.log"
    # The application's log, opened once without O_APPEND, as `app > app.log` does.
    writer = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        before = _ids("before", 100)
        _write(writer, before)
        proc = start(sqlite_cli, "--follow", str(log), stdin=subprocess.DEVNULL)
        procs.append(proc)
        wait_until(lambda: set(before) <= queued(db_url), 30, "the lines before the rotation")

        # logrotate copytruncate: copy, then truncate the path in place.
        shutil.copyfile(log, tmp_path / "app.log.1")
        os.truncate(log, 0)
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
