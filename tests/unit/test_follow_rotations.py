"""Which rotated files ``--follow`` has not read yet (archiver.follow.rotated_since), and
seeing a file rewritten under the read position (archiver.follow.rewritten): real files."""

from __future__ import annotations

import os
from pathlib import Path

from archiver import follow


def _file(path: Path, mtime_ns: int, body: bytes = b"resp_x\n") -> Path:
    path.write_bytes(body)
    os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def test_unread_rotations_are_the_newer_ones_oldest_first(tmp_path: Path) -> None:
    second = 10**18
    finished = _file(tmp_path / "app.log.3", 5 * second)
    _file(tmp_path / "app.log.4", 4 * second)  # older: read before
    _file(tmp_path / "app.log.1", 7 * second)
    _file(tmp_path / "app.log.2", 7 * second)  # same tick as .1: .2 is the older rotation
    _file(tmp_path / "app.log-20261201", 6 * second)
    _file(tmp_path / "app.log.5.gz", 8 * second)  # newer but compressed: named, not opened
    _file(tmp_path / "app.log.6.gz", 5 * second)  # the finished file, compressed by logrotate
    _file(tmp_path / "other.log", 9 * second)  # another log
    current = _file(tmp_path / "app.log", 9 * second)
    (tmp_path / "app.log.d").mkdir()
    skip = {follow.identity(finished.stat()), follow.identity(current.stat())}

    files, compressed = follow.rotated_since(str(current), finished.stat().st_mtime_ns, skip)
    try:
        assert [Path(f.name).name for f in files] == ["app.log-20261201", "app.log.2", "app.log.1"]
        assert [follow.identity(os.fstat(f.fd)) for f in files] == [f.identity for f in files]
    finally:
        for f in files:
            os.close(f.fd)
    assert compressed == [str(tmp_path / "app.log.5.gz")]


def test_a_file_rewritten_past_the_read_position_is_seen(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(b"resp_x1\nresp_x2\n")
    fd = os.open(log, os.O_RDONLY)
    try:
        offset = log.stat().st_size
        tail = follow.tail_before(fd, offset)
        assert not follow.rewritten(fd, offset, tail)
        with open(log, "ab") as f:
            f.write(b"resp_x3\n")
        assert not follow.rewritten(fd, offset, tail), "growing is not rewriting"
        with open(log, "r+b") as f:
            f.truncate(0)
            f.write(b"resp_y1\nresp_y2\nresp_y3\n")
        assert follow.rewritten(fd, offset, tail)
        assert not follow.rewritten(fd, 0, b""), "nothing read yet: nothing to compare"
    finally:
        os.close(fd)
