"""Following a log like ``tail -F``, with the position kept in the database.

``archiver enqueue --follow FILE`` reads the file at a path, waits for new lines, and
survives rotation (the file renamed, a new one created at the path) and truncation
(logrotate's ``copytruncate``). Its position is one ``archive_follow`` row per path: the
file's identity (device and inode), the byte offset just past the last complete line
consumed, the number of lines consumed, and a SHA-256 of up to 256 bytes before that
offset. :mod:`archiver.ingest` writes the row in the transaction that queues the IDs read
up to it, so a restart neither loses nor re-reads a line.

On start the saved position is checked against the file: the same identity, at least
that many bytes, and the same bytes before the offset mean "resume there". When the path
holds another file (rotated while archiver was down), the old file is looked for by its
inode in the same directory (``app.log.1``) and its rest is read first. Anything that does
not match starts the file again from byte 0: re-reading is harmless (known IDs count as
"already known"), skipping would lose IDs.

Rotations the follower did not see (several while it was down, or two within one poll)
left files it has not read beside the path. "Not read yet" is decided by
:func:`rotated_since`: a regular file in the same directory whose name starts with the
log's name (``app.log.1``, ``app.log.2``, ``app.log-20261201``), that is neither the file
just finished nor the one now at the path, and that was last modified at or after the
finished file's last modification (a later rotation holds later lines). They are read whole,
oldest first (by modification time, then ``.2`` before ``.1``), then the file at the path
from byte 0. A file that ties or was touched later is read again, which is harmless.
Compressed rotations (``.gz``, ``.bz2``, ``.xz``, ``.zst``, ...) cannot be read: they are
named in a warning and skipped. Each file waiting its turn keeps its size and fingerprint
from when it was listed (:func:`as_seen`): one ``copytruncate`` emptied meanwhile is read
from its copy first (:func:`truncated_copy`).

While following, a truncation is seen when the file becomes shorter than what was read,
and also when it was truncated and written past that point within one poll: after each
wait the last bytes read (kept in memory, at most :data:`FINGERPRINT_BYTES`) are compared
with the file's bytes at the same place, one small ``pread``; when they differ the file was
rewritten and is read again from byte 0.

After a truncation (seen while following, or on start: the same inode no longer matches)
the copy ``copytruncate`` left beside the path is looked for by content (:func:`find_copy`:
at least as long, the same bytes before the read position) and read on from that position
first: lines written after the last look and before the copy are only there. A file
truncated while nothing of it had been read (empty at the last look) gives no bytes to
recognize: when such a file was modified since, rotated files modified after that last
look are read whole first (at most one directory scan per change of an empty file).
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import BigInteger, Column, Float, Table, Text, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from archiver.db import now_sql
from archiver.errors import ArchiverError, ConfigError
from archiver.schema import metadata
from archiver.transactions import statement_at_a_time

FINGERPRINT_BYTES = 256
"""Bytes before the saved offset whose hash must still match on resume."""

COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".lzma", ".z", ".zip")
"""Rotated files with these endings cannot be read as lines: they are skipped with a warning."""

archive_follow = Table(
    "archive_follow",
    metadata,
    Column("path", Text, primary_key=True),
    Column("device", BigInteger, nullable=False),
    Column("inode", BigInteger, nullable=False),
    Column("byte_offset", BigInteger, nullable=False),
    Column("line_no", BigInteger, nullable=False),
    Column("tail_sha256", Text, nullable=False),
    Column("updated_at", Float, nullable=False),
    comment="Where `archiver enqueue --follow` is in each followed file; see archiver/follow.py",
)


class FollowConflict(ArchiverError):
    """Another `archiver enqueue --follow` moved this file's position: run one follower per file."""


def _signed(value: int) -> int:
    """A 64-bit unsigned number (an inode) as the signed value a BIGINT holds."""
    return value - (1 << 64) if value >= 1 << 63 else value


@dataclass(frozen=True, slots=True)
class FollowPosition:
    """Where a follower is: which file, the byte after the last consumed line, lines consumed."""

    device: int
    inode: int
    byte_offset: int
    line_no: int
    tail_sha256: str
    updated_at: float = 0.0
    """When it was saved (database clock, unix seconds); 0 for a position not saved yet."""

    @classmethod
    def from_row(cls, row: Any) -> FollowPosition:
        """Build from ``(device, inode, byte_offset, line_no, tail_sha256, updated_at)``."""
        return cls(int(row[0]), int(row[1]), int(row[2]), int(row[3]), str(row[4]), float(row[5]))


def identity(st: os.stat_result) -> tuple[int, int]:
    """(device, inode) of a file, as stored (signed 64-bit)."""
    return _signed(st.st_dev), _signed(st.st_ino)


def fingerprint(fd: int, offset: int) -> str:
    """SHA-256 (hex) of the up to 256 bytes before ``offset`` in the open file ``fd``."""
    return hashlib.sha256(tail_before(fd, offset)).hexdigest()


async def load_position(engine: AsyncEngine, path: str) -> FollowPosition | None:
    """The saved position for ``path`` (an absolute path), or None."""
    async with statement_at_a_time(engine) as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT device, inode, byte_offset, line_no, tail_sha256, updated_at FROM archive_follow "
                    "WHERE path = :path"
                ),
                {"path": path},
            )
        ).first()
    return FollowPosition.from_row(row) if row is not None else None


async def save_position(
    conn: AsyncConnection, path: str, old: FollowPosition | None, new: FollowPosition
) -> None:
    """Move ``path``'s row from ``old`` to ``new`` inside the caller's transaction.

    Fenced: the row must still hold ``old`` (nothing, for the first save), so two followers
    of one file cannot both advance it.

    Raises:
        FollowConflict: another follower saved a position in between.
    """
    now = now_sql(conn.dialect.name)
    values = {
        "path": path,
        "device": new.device,
        "inode": new.inode,
        "offset": new.byte_offset,
        "line_no": new.line_no,
        "tail": new.tail_sha256,
    }
    if old is None:
        result = await conn.execute(
            text(
                "INSERT INTO archive_follow (path, device, inode, byte_offset, line_no, tail_sha256, "
                f"updated_at) VALUES (:path, :device, :inode, :offset, :line_no, :tail, {now}) "
                "ON CONFLICT (path) DO NOTHING"
            ),
            values,
        )
    else:
        result = await conn.execute(
            text(
                "UPDATE archive_follow SET device = :device, inode = :inode, byte_offset = :offset, "
                f"line_no = :line_no, tail_sha256 = :tail, updated_at = {now} "
                "WHERE path = :path AND device = :old_device AND inode = :old_inode "
                "AND byte_offset = :old_offset AND line_no = :old_line_no"
            ),
            {
                **values,
                "old_device": old.device,
                "old_inode": old.inode,
                "old_offset": old.byte_offset,
                "old_line_no": old.line_no,
            },
        )
    if result.rowcount != 1:
        raise FollowConflict(
            f"another `archiver enqueue --follow` moved the position of {path}: run one follower per file"
        )


@dataclass(slots=True)
class Rotated:
    """A file to read whole after the current one: a rotation not read yet, or the new file."""

    fd: int
    identity: tuple[int, int]
    name: str
    size: int = -1
    """Its size when it was put in the backlog (-1: not recorded, nothing to check)."""
    tail_sha256: str = ""
    """:func:`fingerprint` at ``size`` then."""
    mtime_ns: int = 0
    """Its modification time then."""


def as_seen(fd: int, name: str) -> Rotated:
    """A file to read whole later, with what it holds now: a ``copytruncate`` before its turn
    (the old file of a restart may take minutes to read) then shows (:func:`truncated_copy`)."""
    st = os.fstat(fd)
    return Rotated(fd, identity(st), name, st.st_size, fingerprint(fd, st.st_size), st.st_mtime_ns)


def truncated_copy(path: str, entry: Rotated, skip: set[tuple[int, int]]) -> Rotated | None:
    """The copy ``copytruncate`` left of ``entry`` if it was truncated since :func:`as_seen`, open."""
    if entry.size <= 0:
        return None
    if os.fstat(entry.fd).st_size >= entry.size and fingerprint(entry.fd, entry.size) == entry.tail_sha256:
        return None
    return find_copy(path, entry.size, entry.tail_sha256, skip | {entry.identity})


@dataclass(slots=True)
class Opened:
    """A followed file open for reading: where to start, and why there."""

    fd: int
    identity: tuple[int, int]
    byte_offset: int
    line_no: int
    note: str | None = None
    """Set when the saved position could not be used as it was (for the log)."""
    backlog: list[Rotated] = field(default_factory=list)
    """Files to read whole after this one, in order (the last is the file at the path)."""
    compressed: list[str] = field(default_factory=list)
    """Rotations not read yet that are compressed: skipped (for a warning)."""


def open_followed(path: str, saved: FollowPosition | None) -> Opened | None:
    """Open the file to follow and find where to start reading.

    Args:
        path: absolute path of the followed file.
        saved: the position saved by an earlier run, if any.

    Returns:
        None while nothing is at ``path`` (and no saved file is found): try again later.

    Raises:
        ArchiverError: ``path`` is not a regular file (a FIFO, a directory, a device).
    """
    if saved is not None:
        found = _open_identity(path, (saved.device, saved.inode))
        if found is not None:
            fd, where = found
            size = os.fstat(fd).st_size
            if size >= saved.byte_offset and fingerprint(fd, saved.byte_offset) == saved.tail_sha256:
                opened = Opened(fd, (saved.device, saved.inode), saved.byte_offset, saved.line_no, where)
                if saved.byte_offset == 0:
                    return _copies_since_save(path, opened, saved.updated_at, at_path=where is None)
                if where is not None:
                    opened.backlog, opened.compressed = backlog_after(path, fd, opened.identity)
                return opened
            os.close(fd)
        copy = find_copy(path, saved.byte_offset, saved.tail_sha256, {(saved.device, saved.inode)})
        if copy is not None:  # copytruncate while down: the rest is in the copy
            note = f"{copy.name}: the file was truncated; reading its copy from the saved position first"
            opened = Opened(copy.fd, copy.identity, saved.byte_offset, saved.line_no, note)
            opened.backlog, opened.compressed = backlog_after(path, copy.fd, copy.identity)
            return opened
        if found is None:
            return _open_path(path, "the file followed before is gone: reading the path from its start")
        if found[1] is None:
            return _open_path(path, "the file changed under the saved position: reading it again")
        # The rotated file no longer holds what was read: what it held is gone.
        return _open_path(path, f"{found[1]}: the rotated file no longer matches the saved position")
    return _open_path(path, None)


SAVE_CLOCK_MARGIN_S = 2.0
"""How much earlier than a save a rotation may be dated and still count as unread (clock skew)."""


def _copies_since_save(path: str, opened: Opened, saved_at: float, *, at_path: bool) -> Opened:
    """Saved at byte 0 of ``opened``: rotations made since then hold lines not read.

    Nothing was read, so a truncation leaves nothing to compare; rotated files modified
    after the save (less a margin for the database clock) are read whole, first when
    ``opened`` is the file at the path. When it was found under a rotated name instead,
    it is read first and then those files and the file at the path: its ``copytruncate``
    copies made before it was renamed are older than it, so "rotated after the file
    finished" (:func:`backlog_after`) would miss them.
    """
    after_ns = int((saved_at - SAVE_CLOCK_MARGIN_S) * 1e9)
    if not at_path:
        current = _open_path(path, None)
        skip = {opened.identity} | ({current.identity} if current is not None else set())
        opened.backlog, opened.compressed = rotated_since(path, after_ns, skip)
        if current is not None:
            opened.backlog.append(as_seen(current.fd, path))
        return opened
    files, compressed = rotated_since(path, after_ns, {opened.identity})
    if not files:
        return opened
    first = files.pop(0)
    note = f"{first.name}: rotated since the position was saved at the start of the file: read first"
    resumed = Opened(first.fd, first.identity, 0, 1, note)
    resumed.backlog = [*files, as_seen(opened.fd, path)]
    resumed.compressed = compressed
    return resumed


def find_copy(path: str, offset: int, tail_sha256: str, skip: set[tuple[int, int]]) -> Rotated | None:
    """The copy logrotate's ``copytruncate`` left beside ``path`` that holds what was read.

    Args:
        path: the followed path.
        offset: how far the truncated file had been read.
        tail_sha256: :func:`fingerprint` of the truncated file at ``offset``.
        skip: identities that are not a copy (the truncated file).

    Returns:
        the newest rotated file of at least ``offset`` bytes with the same bytes before
        ``offset``, open; None when there is none (a plain truncation).
    """
    if offset == 0:
        return None
    best: tuple[int, Rotated] | None = None
    for entry in _siblings(path):
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            continue
        st = os.fstat(fd)
        if (
            stat.S_ISREG(st.st_mode)
            and identity(st) not in skip
            and st.st_size >= offset
            and fingerprint(fd, offset) == tail_sha256
            and (best is None or st.st_mtime_ns > best[0])
        ):
            if best is not None:
                os.close(best[1].fd)
            best = (st.st_mtime_ns, Rotated(fd, identity(st), entry.path))
        else:
            os.close(fd)
    return best[1] if best is not None else None


def _open_path(path: str, note: str | None) -> Opened | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot follow {path}: {exc.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise ConfigError(f"cannot follow {path}: not a regular file (--follow reads logs that grow)")
    os.set_blocking(fd, True)
    return Opened(fd, identity(st), 0, 1, note)


def _open_identity(path: str, wanted: tuple[int, int]) -> tuple[int, str | None] | None:
    """Open the file with identity ``wanted``: at ``path``, else a rotated name beside it.

    Returns ``(fd, None)`` for the path itself, ``(fd, name)`` for a rotated file.
    """
    try:
        if identity(os.stat(path)) == wanted:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            if identity(os.fstat(fd)) == wanted:
                return fd, None
            os.close(fd)
    except OSError:
        pass
    directory = os.path.dirname(path)
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return None
    for entry in entries:
        try:
            if _signed(entry.inode()) != wanted[1] or not entry.is_file(follow_symlinks=False):
                continue
            fd = os.open(entry.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        if identity(os.fstat(fd)) == wanted:
            return fd, entry.path
        os.close(fd)
    return None


def path_change(path: str, fd: int, current: tuple[int, int], read_to: int) -> str | None:
    """What happened to a followed file since the last look.

    Args:
        path: the followed path.
        fd: the open file being read.
        current: its identity.
        read_to: how far it has been read.

    Returns:
        ``"truncated"`` when the open file is now shorter than what was read;
        ``"rotated"`` when the path holds another file that has data (until it has,
        the writer may still be appending to the old one, which is read on);
        else None.
    """
    if os.fstat(fd).st_size < read_to:
        return "truncated"
    try:
        st = os.stat(path)
    except OSError:
        return None  # deleted or being replaced: keep reading the open file
    if identity(st) != current and stat.S_ISREG(st.st_mode) and st.st_size > 0:
        return "rotated"
    return None


def backlog_after(path: str, fd: int, finished: tuple[int, int]) -> tuple[list[Rotated], list[str]]:
    """What to read after the rotated file ``fd``: unread rotations, then the file at ``path``.

    The file at the path is opened first, so a rotation racing with this look is either
    that file or one of the rotations found after it.

    Returns:
        the files to read whole, in order, and the compressed rotations skipped.
    """
    current = _open_path(path, None)
    skip = {finished} | ({current.identity} if current is not None else set())
    files, compressed = rotated_since(path, os.fstat(fd).st_mtime_ns, skip)
    if current is not None:
        files.append(as_seen(current.fd, path))
    return files, compressed


def rotated_since(path: str, after_ns: int, skip: set[tuple[int, int]]) -> tuple[list[Rotated], list[str]]:
    """Rotated files beside ``path`` not read yet (see the module docstring), open, oldest first.

    Args:
        path: the followed path.
        after_ns: the last modification of the file just finished (nanoseconds): files
            modified before it were read before it.
        skip: identities not to return (the finished file, the file at the path).

    Returns:
        the open files, oldest first, and the compressed ones (names) that cannot be read.
    """
    base = os.path.basename(path)
    found: list[tuple[int, int, str]] = []
    compressed: list[str] = []
    for entry in _siblings(path):
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode) or identity(st) in skip or st.st_mtime_ns < after_ns:
            continue
        if entry.name.lower().endswith(COMPRESSED_SUFFIXES):
            # gzip keeps the source's mtime: the file just finished, compressed, ties (read).
            if st.st_mtime_ns > after_ns:
                compressed.append(entry.path)
        else:
            found.append((st.st_mtime_ns, _rotation_age(entry.name[len(base) :]), entry.path))
    files: list[Rotated] = []
    for _mtime, _age, name in sorted(found):
        try:
            fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        st = os.fstat(fd)
        if identity(st) in skip or not stat.S_ISREG(st.st_mode):
            os.close(fd)
            continue
        files.append(as_seen(fd, name))
    return files, sorted(compressed)


def _siblings(path: str) -> list[os.DirEntry[str]]:
    """Entries beside ``path`` whose name starts with its name (its rotations, among others)."""
    directory, base = os.path.split(path)
    try:
        with os.scandir(directory) as entries:
            return [entry for entry in entries if entry.name != base and entry.name.startswith(base)]
    except OSError:
        return []


def _rotation_age(suffix: str) -> int:
    """Order of rotations modified in the same clock tick: ``.2`` (older) before ``.1``."""
    numbered = re.fullmatch(r"[.\-_](\d{1,4})", suffix)
    return -int(numbered.group(1)) if numbered else 0


def rewritten(fd: int, offset: int, tail: bytes) -> bool:
    """Whether the bytes before ``offset`` are no longer ``tail`` (the file was truncated and rewritten)."""
    if not tail:
        return False
    return os.pread(fd, len(tail), offset - len(tail)) != tail


def tail_before(fd: int, offset: int) -> bytes:
    """The up to :data:`FINGERPRINT_BYTES` bytes before ``offset``."""
    start = max(0, offset - FINGERPRINT_BYTES)
    return os.pread(fd, offset - start, start)
