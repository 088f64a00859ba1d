"""Reading ID lists into the queue: files, pipes, FIFOs, terminals and followed logs.

What ``archiver enqueue`` promises, whatever the input:

- **Committed as it arrives.** IDs are committed in batches of :data:`BATCH_IDS`, or
  :data:`COMMIT_AFTER_S` after the first uncommitted line was read, whichever comes
  first: lines piped by an application that keeps its pipe open are in the queue within a
  second. A big file still goes in big batches.
- **Stops cleanly.** SIGINT, SIGTERM and SIGHUP (the first one) commit what was read and
  end the command, even while a read is blocked (a FIFO or pipe with no writer activity):
  input is read only once the event loop says it is ready, so the signal is never stuck
  behind a blocking read. A second signal exits at once (:mod:`archiver.signals`).
- **Bounded memory.** Input is read in pieces of :data:`READ_BYTES`; at most one unfinished
  line of up to :data:`MAX_LINE_BYTES` is held. A longer line is rejected while it is
  skipped, never held whole. A NUL byte means the input is binary, not an ID list: it is
  refused with one line and not read further (``archiver enqueue /dev/zero``). Only
  :data:`MAX_PRINTED_REJECTIONS` rejected lines are printed; the rest are counted.

``--follow`` (see :mod:`archiver.follow`) uses the same batching and also commits the
file position in each batch's transaction. In a followed log NUL bytes are a hole
(``copytruncate`` under a writer that does not append, a crash), skipped, not binary input.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import stat
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TextIO

from sqlalchemy.ext.asyncio import AsyncConnection

from archiver import follow
from archiver.deadline import StopDeadline
from archiver.ids import IdLine, RejectedLine, parse_id_lines
from archiver.logs import get_logger
from archiver.queue import EnqueueCounts, QueueStore
from archiver.redaction import redact
from archiver.settings import Settings
from archiver.signals import on_stop_signals
from archiver.sources import SourceRouting

__all__ = [
    "BATCH_IDS",
    "COMMIT_AFTER_S",
    "MAX_LINE_BYTES",
    "EnqueueReport",
    "LineSplitter",
    "OverlongLine",
    "enqueue_inputs",
    "follow_file",
]

BATCH_IDS = 20_000
"""IDs per transaction when they arrive faster than :data:`COMMIT_AFTER_S`."""
COMMIT_AFTER_S = 0.5
"""Longest wait from reading a line to committing it (plus the commit itself)."""
FOLLOW_POLL_S = 0.25
"""How often ``--follow`` looks for new data, rotation and truncation."""
READ_BYTES = 256 * 1024
MAX_LINE_BYTES = 1024 * 1024
"""Longest accepted line (without its line ending); longer ones are rejected unread."""
MAX_PRINTED_REJECTIONS = 100
_SHOWN_BYTES = 80

log = get_logger()


@dataclass(slots=True)
class EnqueueReport:
    """Totals of one ``enqueue`` call."""

    queued: int = 0
    already_known: int = 0
    requeued: int = 0
    rejected: int = 0
    missing_files: int = 0
    binary_inputs: int = 0
    unprinted: int = 0
    """Rejected lines counted but not printed (past :data:`MAX_PRINTED_REJECTIONS`)."""
    stopped_by: str | None = None
    """The signal that ended the command, if one did."""

    def add(self, counts: EnqueueCounts) -> None:
        """Fold one batch's counts in."""
        self.queued += counts.queued
        self.already_known += counts.already_known
        self.requeued += counts.requeued

    def summary(self, *, refetch: bool = False) -> str:
        """The line ``enqueue`` prints: ``queued N, already known M, rejected R``."""
        rejected = f"rejected {self.rejected}"
        if self.unprinted:
            rejected += f" ({self.unprinted} not printed)"
        parts = [f"queued {self.queued}", f"already known {self.already_known}", rejected]
        if refetch:
            parts.append(f"requeued {self.requeued}")
        return ", ".join(parts)

    @property
    def failed(self) -> bool:
        """A line was rejected, or an input was missing, unreadable or binary (exit status 1)."""
        return bool(self.rejected or self.missing_files or self.binary_inputs)


# --- cutting bytes into lines ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OverlongLine:
    """A line over the limit: its length in bytes (without line ending) and its first bytes."""

    size: int
    head: bytes


@dataclass(frozen=True, slots=True)
class CutLine:
    """An unfinished line a hole of NUL bytes cut off (a crash): its length and first bytes."""

    size: int
    head: bytes


Piece = list[str] | OverlongLine | CutLine

_NUL_RUNS = re.compile(rb"(\0+)")


class LineSplitter:
    """Cuts a byte stream into complete lines, holding at most one unfinished line.

    Lines end at ``\\n`` (``\\r\\n`` too; a lone ``\\r`` inside a piece also ends one, as
    universal newlines did). Complete lines come out decoded (UTF-8, bad bytes replaced), a
    piece at a time, so the per-line work stays in C. ``consumed`` is the stream offset just
    past the last line handed out: what a follower may save.
    """

    def __init__(self, *, max_line_bytes: int = MAX_LINE_BYTES, start: int = 0, holes: bool = False) -> None:
        self.max_line_bytes = max_line_bytes
        self.consumed = start
        self.holes = holes
        """NUL bytes are a hole in a log (``copytruncate`` under a writer that does not append,
        a crash), skipped, rather than binary input (``--follow``)."""
        self.binary_at: int | None = None
        """Stream offset of the first NUL byte, once one was seen (nothing after it is used)."""
        self._partial = b""
        self._skipped: int | None = None
        self._head = b""
        self._hole = 0
        """NUL bytes read since the last complete line, consumed with the next one: a position
        saved just past a hole would be fingerprinted by NUL bytes alone, which every later
        hole at that offset matches."""

    @property
    def unfinished_bytes(self) -> int:
        """Bytes read past the last complete line (a hole, an unfinished or skipped line)."""
        return self._hole + (self._skipped if self._skipped is not None else len(self._partial))

    def _consume(self, size: int) -> None:
        self.consumed += self._hole + size
        self._hole = 0

    def feed(self, data: bytes) -> list[Piece]:
        """Take the next bytes of the stream; return the lines they complete."""
        if self.binary_at is not None:
            return []
        if self.holes and b"\0" in data:
            return self._feed_holes(data)
        nul = data.find(b"\0")
        if nul >= 0:
            self.binary_at = self.consumed + self.unfinished_bytes + nul
            data = data[:nul]
        pieces: list[Piece] = []
        step = self.max_line_bytes
        for start in range(0, len(data), step):
            self._split(data[start : start + step] if len(data) > step else data, pieces)
        if nul >= 0:  # the line holding the NUL is not a line
            self._partial, self._skipped = b"", None
        return pieces

    def _feed_holes(self, data: bytes) -> list[Piece]:
        """Lines around runs of NUL bytes: a run ends the line it cuts (rejected), adds none."""
        pieces: list[Piece] = []
        for i, part in enumerate(_NUL_RUNS.split(data)):
            if i % 2 == 0:
                if part:
                    pieces.extend(self.feed(part))
                continue
            if self._skipped is not None:
                pieces.append(OverlongLine(self._skipped, self._head))
                self._consume(self._skipped)
            elif self._partial:
                pieces.append(CutLine(len(self._partial), self._partial[:_SHOWN_BYTES]))
                self._consume(len(self._partial))
            self._partial, self._skipped = b"", None
            self._hole += len(part)
        return pieces

    def finish(self) -> list[Piece]:
        """End of the stream: an unfinished last line counts as a line too."""
        if self.binary_at is not None:
            return []
        if self._skipped is not None:
            size, self._skipped = self._skipped, None
            self._consume(size)
            return [OverlongLine(size, self._head)]
        if not self._partial:
            self._consume(0)  # a hole at the end
            return []
        block, self._partial = self._partial, b""
        self._consume(len(block))
        lines = _decode(block)
        if lines and lines[-1] == "":
            lines.pop()  # a trailing lone "\r"
        return [lines]

    def drop_unfinished(self) -> int:
        """Forget the unfinished line (truncated file); return its length."""
        dropped = self.unfinished_bytes
        self._partial, self._skipped, self._hole = b"", None, 0
        return dropped

    def _split(self, data: bytes, pieces: list[Piece]) -> None:
        if self._skipped is not None:
            end = data.find(b"\n")
            if end < 0:
                self._skipped += len(data)
                return
            size = self._skipped + end
            pieces.append(OverlongLine(size, self._head))
            self._consume(size + 1)
            self._skipped = None
            data = data[end + 1 :]
        end = data.rfind(b"\n")
        if end >= 0 and self._partial:
            first = data.find(b"\n")
            if len(self._partial) + first > self.max_line_bytes:
                size = len(self._partial) + first
                pieces.append(OverlongLine(size, self._partial[:_SHOWN_BYTES]))
                self._consume(size + 1)
                self._partial = b""
                data = data[first + 1 :]
                end -= first + 1
        if end < 0:
            self._hold(data)
            return
        block = self._partial + data[: end + 1] if self._partial else data[: end + 1]
        self._partial = b""
        self._consume(len(block))
        lines = _decode(block)
        lines.pop()  # after the last "\n"
        pieces.append(lines)
        self._hold(data[end + 1 :])

    def _hold(self, data: bytes) -> None:
        if not data:
            return
        self._partial = self._partial + data if self._partial else data
        if len(self._partial) > self.max_line_bytes:
            self._skipped = len(self._partial)
            self._head = self._partial[:_SHOWN_BYTES]
            self._partial = b""


def _decode(block: bytes) -> list[str]:
    text = block.decode("utf-8", "replace")
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.split("\n")


# --- batches ---------------------------------------------------------------------------


class _Batcher:
    """IDs read but not committed yet, the rejected-line printer, and the stop request."""

    def __init__(
        self,
        queue: QueueStore,
        report: EnqueueReport,
        *,
        refetch: bool,
        err: TextIO,
        routing: SourceRouting | None = None,
        deadline: StopDeadline | None = None,
    ) -> None:
        self.queue = queue
        self.deadline = deadline or StopDeadline(Settings.final_write_seconds)
        """Started by the stop: the last commit gets until then (``--final-write-seconds``)."""
        self.report = report
        self.refetch = refetch
        self.err = err
        self.routing = routing or SourceRouting()
        self.ids: list[str] = []
        self.created: list[float | None] = []
        self.sources: list[str] = []
        self.first_at: float | None = None
        self.stop_reason: str | None = None
        self._wake: Callable[[str], None] | None = None

    # stop

    def request_stop(self, reason: str) -> None:
        """First stop signal: finish the current read, commit, end."""
        if self.stop_reason is None:
            self.stop_reason = reason
            self.deadline.start()
        if self._wake is not None:
            self._wake("stop")

    # lines

    def take(self, name: str, line_no: int, pieces: list[Piece]) -> int:
        """Add the IDs of complete lines; print rejections. Returns the next line number."""
        ids, created, sources, routing = self.ids, self.created, self.sources, self.routing
        for piece in pieces:
            if isinstance(piece, OverlongLine):
                shown = piece.head.decode("utf-8", "replace")
                self.reject(
                    name, RejectedLine(line_no, f"line longer than 1 MiB ({piece.size} bytes)", shown + "...")
                )
                line_no += 1
                continue
            if isinstance(piece, CutLine):
                shown = piece.head.decode("utf-8", "replace")
                why = f"line cut off by NUL bytes ({piece.size} bytes before them)"
                self.reject(name, RejectedLine(line_no, why, shown))
                line_no += 1
                continue
            for parsed in parse_id_lines(piece, start=line_no):
                source = routing.source_of(parsed) if isinstance(parsed, IdLine) else parsed
                if isinstance(source, str):
                    assert isinstance(parsed, IdLine)
                    ids.append(parsed.response_id)
                    created.append(parsed.created_at)
                    sources.append(source)
                else:
                    self.reject(name, source)
            line_no += len(piece)
        if ids and self.first_at is None:
            self.first_at = time.monotonic()
        return line_no

    def reject(self, name: str, line: RejectedLine) -> None:
        """Count a rejected line; print the first :data:`MAX_PRINTED_REJECTIONS`."""
        self.report.rejected += 1
        if self.report.rejected > MAX_PRINTED_REJECTIONS:
            if not self.report.unprinted:
                print(
                    f"archiver: more than {MAX_PRINTED_REJECTIONS} rejected lines: the rest are only counted",
                    file=self.err,
                )
            self.report.unprinted += 1
            return
        print(redact(f"{name}:{line.line_no}: rejected: {line.reason}: {line.text!r}"), file=self.err)

    # commits

    def time_left(self) -> float | None:
        """Seconds until the batch is due by time (None when nothing waits)."""
        if self.first_at is None:
            return None
        return max(0.0, self.first_at + COMMIT_AFTER_S - time.monotonic())

    def due(self) -> bool:
        """Full, or its first line waited long enough."""
        if len(self.ids) >= BATCH_IDS:
            return True
        return self.first_at is not None and time.monotonic() - self.first_at >= COMMIT_AFTER_S

    async def commit(self, save: Callable[[AsyncConnection], Awaitable[None]] | None = None) -> None:
        """Queue the batch in one transaction (with ``save(conn)`` in it too, when given)."""
        if not self.ids and save is None:
            return
        ids, created, sources = self.ids, self.created, self.sources
        self.ids, self.created, self.sources, self.first_at = [], [], [], None

        # The commit checks first that the SQLite file is still the archive (see
        # archiver.sqlite_engine.tune_sqlite): IDs count as queued only once it succeeded.
        async def transaction() -> EnqueueCounts | None:
            counts = None
            async with self.queue.engine.begin() as conn:
                if ids:
                    known = created if any(c is not None for c in created) else None
                    counts = await self.queue.enqueue_on(
                        conn, ids, refetch=self.refetch, created_at=known, sources=sources
                    )
                if save is not None:
                    await save(conn)
            return counts

        # After a stop, the database down or locked must not hold the process past the deadline.
        counts = await self.deadline.run(transaction)
        if counts is not None:
            self.report.add(counts)

    # waiting

    async def wait(self, fd: int | None, timeout: float | None) -> str:
        """Wait until ``fd`` is readable (``"ready"``), ``timeout`` passed, or a stop."""
        if self.stop_reason is not None:
            return "stop"
        loop = asyncio.get_running_loop()
        woken: asyncio.Future[str] = loop.create_future()

        def wake(why: str) -> None:
            if not woken.done():
                woken.set_result(why)

        if fd is not None:
            loop.add_reader(fd, wake, "ready")
        timer = loop.call_later(timeout, wake, "timeout") if timeout is not None else None
        self._wake = wake
        try:
            return await woken
        finally:
            self._wake = None
            if fd is not None:
                loop.remove_reader(fd)
            if timer is not None:
                timer.cancel()


# --- plain inputs: files, stdin, FIFOs -------------------------------------------------


def _pollable(fd: int) -> bool:
    """Whether the event loop can wait on ``fd`` (pipes, FIFOs, terminals, sockets).

    Regular files and devices like /dev/zero cannot be waited on, and never block.
    """
    loop = asyncio.get_running_loop()
    try:
        loop.add_reader(fd, lambda: None)
    except OSError:
        return False
    loop.remove_reader(fd)
    return True


def _open_inputs(paths: Sequence[str], report: EnqueueReport, err: TextIO) -> Iterator[tuple[str, int]]:
    """``(name, fd)`` per input; the fds of named files are closed after use."""
    if not paths:
        yield "<stdin>", sys.stdin.fileno()
        return
    for path in paths:
        if path == "-":
            yield "<stdin>", sys.stdin.fileno()
            continue
        try:
            # O_NONBLOCK: opening a FIFO must not block until a writer comes (a stop signal
            # could not end that wait). The fd stays non-blocking only for FIFOs.
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
            st = os.fstat(fd)
        except OSError as exc:
            report.missing_files += 1
            print(f"archiver: cannot read {path}: {exc.strerror}", file=err)
            continue
        try:
            if stat.S_ISDIR(st.st_mode):
                report.missing_files += 1
                print(f"archiver: cannot read {path}: Is a directory", file=err)
                continue
            if not stat.S_ISFIFO(st.st_mode):
                os.set_blocking(fd, True)
            yield path, fd
        finally:
            os.close(fd)


async def _read_input(batcher: _Batcher, name: str, fd: int) -> None:
    """Read one input to its end (or a stop), committing as batches fill or fall due."""
    splitter = LineSplitter()
    pollable = _pollable(fd)
    line_no = 1
    while True:
        if pollable:
            why = await batcher.wait(fd, batcher.time_left())
            if why == "stop":
                break
            if why == "timeout":
                await batcher.commit()
                continue
        elif batcher.stop_reason is not None:
            break
        try:
            data = os.read(fd, READ_BYTES)
        except BlockingIOError:
            continue
        except OSError as exc:
            batcher.report.missing_files += 1
            print(f"archiver: cannot read {name}: {exc.strerror}", file=batcher.err)
            return
        if not data:
            batcher.take(name, line_no, splitter.finish())
            return
        line_no = batcher.take(name, line_no, splitter.feed(data))
        if splitter.binary_at is not None:
            batcher.report.binary_inputs += 1
            print(
                f"archiver: {name}: binary input (a NUL byte at byte {splitter.binary_at}), "
                "not a list of IDs: not read further",
                file=batcher.err,
            )
            return
        if batcher.due():
            await batcher.commit()
        elif not pollable:
            await asyncio.sleep(0)  # let a stop signal in between reads of a long file
    if splitter.unfinished_bytes:
        print(
            f"archiver: {name}: an unfinished last line ({splitter.unfinished_bytes} bytes, "
            "no newline yet) was not queued",
            file=batcher.err,
        )


async def enqueue_inputs(
    queue: QueueStore,
    paths: Sequence[str],
    *,
    refetch: bool = False,
    err: TextIO = sys.stderr,
    routing: SourceRouting | None = None,
    deadline: StopDeadline | None = None,
) -> EnqueueReport:
    """Queue the IDs in ``paths`` (stdin when empty, ``-`` for stdin), as they arrive.

    A stop signal ends the reading; what was read is committed, and the report's
    ``stopped_by`` names the signal. ``routing`` picks each ID's source (a JSON line's
    ``source``, else ``--source``) and rejects unknown ones.
    """
    report = EnqueueReport()
    batcher = _Batcher(queue, report, refetch=refetch, err=err, routing=routing, deadline=deadline)
    with on_stop_signals(batcher.request_stop):
        for name, fd in _open_inputs(paths, report, err):
            await _read_input(batcher, name, fd)
            if batcher.stop_reason is not None:
                break
        await batcher.commit()
    report.stopped_by = batcher.stop_reason
    return report


# --- --follow ----------------------------------------------------------------------------


async def follow_file(
    queue: QueueStore,
    path: str,
    *,
    refetch: bool = False,
    err: TextIO = sys.stderr,
    routing: SourceRouting | None = None,
    deadline: StopDeadline | None = None,
) -> EnqueueReport:
    """Follow the log at ``path`` like ``tail -F`` until a stop signal (see :mod:`archiver.follow`).

    Each batch's transaction also saves the position just past its last complete line.
    """
    report = EnqueueReport()
    batcher = _Batcher(queue, report, refetch=refetch, err=err, routing=routing, deadline=deadline)
    with on_stop_signals(batcher.request_stop):
        follower = _Follower(batcher, path)
        try:
            await follower.run()
        finally:
            follower.close()
    report.stopped_by = batcher.stop_reason
    return report


class _Follower:
    """The reading loop of ``--follow``: one file at a time, switching on rotation."""

    def __init__(self, batcher: _Batcher, path: str) -> None:
        self.batcher = batcher
        self.path = os.path.abspath(path)
        self.saved: follow.FollowPosition | None = None
        self.opened: follow.Opened | None = None
        self.splitter = LineSplitter(holes=True)
        self.line_no = 1
        self.read_to = 0
        self.tail = b""
        """The last bytes read (up to follow.FINGERPRINT_BYTES), to see a rewrite under ``read_to``."""
        self.check_tail = False
        """Set by each wait: the next read also checks ``tail`` (one small pread per poll)."""
        self.backlog: list[follow.Rotated] = []
        """Files to read whole after the current one (rotations not read yet, then the path's file)."""
        self.empty_mtime: int | None = None
        """The current file's mtime when it was last seen with nothing read from it."""
        self.finished: set[tuple[int, int]] = set()
        """Files finished by this process (not unread copies), the last few."""

    async def run(self) -> None:
        batcher = self.batcher
        self.saved = await follow.load_position(batcher.queue.engine, self.path)
        missing_told = False
        while batcher.stop_reason is None:
            if self.opened is None and not self._open():
                if not missing_told:  # a typo in the path would otherwise wait without a word
                    missing_told = True
                    why = "the file does not exist yet: waiting for it"
                    log.warning("archiver.follow_waiting", path=self.path, error=why)
                await batcher.wait(None, FOLLOW_POLL_S)
                continue
            if self.check_tail and self.read_to == 0 and await self._copied_while_empty():
                continue
            data = self._read(check=self.check_tail)
            if data is None:
                await self._restart_file("rewritten")
                continue
            if data:
                self._feed(data)
                if batcher.due():
                    await self._commit()
                else:
                    await asyncio.sleep(0)
                continue
            await self._after_eof()
        await self._commit()

    # reading

    def _open(self) -> bool:
        opened = follow.open_followed(self.path, self.saved)
        if opened is None:
            return False
        self._begin(opened)
        self._take_backlog(opened.backlog, opened.compressed)
        if opened.note:
            log.warning("archiver.follow_restarted", path=self.path, error=opened.note)
        log.info("archiver.follow_opened", path=self.path, byte_offset=opened.byte_offset)
        return True

    def _begin(self, opened: follow.Opened) -> None:
        """Read ``opened`` from its ``byte_offset`` (0: a new file, or one truncated)."""
        if self.opened is not None and self.opened.identity != opened.identity:
            if len(self.finished) >= 16:
                self.finished.clear()
            self.finished.add(self.opened.identity)
        self.opened = opened
        self.empty_mtime = os.fstat(opened.fd).st_mtime_ns if opened.byte_offset == 0 else None
        self.splitter = LineSplitter(start=opened.byte_offset, holes=True)
        self.line_no = opened.line_no
        self.read_to = opened.byte_offset
        self.tail = follow.tail_before(opened.fd, opened.byte_offset)
        os.lseek(opened.fd, opened.byte_offset, os.SEEK_SET)

    def _take_backlog(self, files: list[follow.Rotated], compressed: list[str]) -> None:
        for rotated in self.backlog:
            os.close(rotated.fd)
        self.backlog = files
        self._warn_compressed(compressed)

    def _begin_backlog(self) -> follow.Rotated:
        """Begin the next file of the backlog at byte 0 (and return it).

        When it was truncated since it was put there (``copytruncate`` while older files
        were read first), its copy is read whole first, then the rotations made since the
        copy, then the file again from byte 0.
        """
        nxt = self.backlog.pop(0)
        skip = {r.identity for r in self.backlog} | self.finished
        copy = follow.truncated_copy(self.path, nxt, skip)
        if copy is not None:
            log.info("archiver.follow_truncated", path=self.path, byte_offset=0, copy=copy.name)
            since, compressed = follow.rotated_since(
                self.path, os.fstat(copy.fd).st_mtime_ns, skip | {copy.identity, nxt.identity}
            )
            self.backlog[:0] = [*since, follow.Rotated(nxt.fd, nxt.identity, nxt.name)]
            self._warn_compressed(compressed)
            nxt = copy
        self._begin(follow.Opened(nxt.fd, nxt.identity, 0, 1))
        if nxt.size == 0:  # empty when seen: lines written and copied since show by its mtime
            self.empty_mtime = nxt.mtime_ns
        return nxt

    def _warn_compressed(self, compressed: list[str]) -> None:
        for name in compressed:
            print(
                f"archiver: {name}: a compressed rotation cannot be followed: the IDs in it are not "
                "queued (queue them with `zcat FILE | archiver enqueue`)",
                file=self.batcher.err,
            )

    def _read(self, *, check: bool = False) -> bytes | None:
        """The next bytes (``b""`` at the end); None when ``check`` finds a rewrite."""
        assert self.opened is not None
        offset, tail = self.read_to, self.tail
        data = os.read(self.opened.fd, READ_BYTES)
        if check:
            # After the read: a truncation before it shows here, one after it at the next poll.
            self.check_tail = False
            if follow.rewritten(self.opened.fd, offset, tail):
                return None
        self.read_to += len(data)
        if data:
            self.tail = (tail + data[-follow.FINGERPRINT_BYTES :])[-follow.FINGERPRINT_BYTES :]
        return data

    def _feed(self, data: bytes) -> None:
        # NUL bytes are a hole (copytruncate under a writer that does not append): skipped.
        self.line_no = self.batcher.take(self.path, self.line_no, self.splitter.feed(data))

    async def _after_eof(self) -> None:
        """Nothing new: commit what is due, look for rotation or truncation, then wait."""
        assert self.opened is not None
        batcher = self.batcher
        if self._dirty() and batcher.time_left() in (None, 0.0):
            await self._commit()
        change = follow.path_change(self.path, self.opened.fd, self.opened.identity, self.read_to)
        if change == "truncated":
            await self._restart_file("truncated")
            return
        if change == "rotated" or self.backlog:  # a newer file exists: this one is finished
            await self._switch()
            return
        await batcher.wait(None, min(FOLLOW_POLL_S, batcher.time_left() or FOLLOW_POLL_S))
        self.check_tail = True

    async def _restart_file(self, why: str) -> None:
        """The file was truncated (or truncated and rewritten): read it again from byte 0.

        When logrotate's ``copytruncate`` left a copy holding what was read, the copy is read
        on from the same offset first (lines written since the last look are only there).
        """
        assert self.opened is not None
        tail_sha256 = hashlib.sha256(self.tail).hexdigest()
        copy = follow.find_copy(self.path, self.read_to, tail_sha256, {self.opened.identity})
        if copy is not None:
            log.info("archiver.follow_truncated", path=self.path, byte_offset=self.read_to, copy=copy.name)
            files, compressed = follow.backlog_after(self.path, copy.fd, copy.identity)
            os.close(self.opened.fd)
            self.opened = follow.Opened(copy.fd, copy.identity, self.read_to, self.line_no)
            os.lseek(copy.fd, self.read_to, os.SEEK_SET)  # the splitter and its unfinished line go on
            self._take_backlog(files, compressed)
            await self._commit(force=True)
            return
        dropped = self.splitter.drop_unfinished()
        log.info(
            "archiver.follow_truncated", path=self.path, byte_offset=self.read_to, dropped=dropped, how=why
        )
        self._begin(follow.Opened(self.opened.fd, self.opened.identity, 0, 1))
        await self._commit(force=True)

    async def _copied_while_empty(self) -> bool:
        """Whether a file read from nothing was written, copied and truncated between two looks.

        Nothing was read, so no bytes tell that the file was truncated: when it changed since
        it was last seen, rotations modified after that look hold its lines (read first).
        """
        assert self.opened is not None
        current = self.opened
        before, self.empty_mtime = self.empty_mtime, os.fstat(current.fd).st_mtime_ns
        if before is None or before == self.empty_mtime or self.backlog:
            return False
        skip = {current.identity} | self.finished
        files, compressed = follow.rotated_since(self.path, before + 1, skip)
        if not files:
            return False
        self._take_backlog([*files, follow.as_seen(current.fd, self.path)], compressed)
        nxt = self._begin_backlog()
        log.info("archiver.follow_truncated", path=self.path, byte_offset=0, copy=nxt.name)
        await self._commit(force=True)
        return True

    async def _switch(self) -> None:
        """A newer file exists: finish this one, then read the rotations not read yet, then the new file."""
        assert self.opened is not None
        old = self.opened
        while (data := self._read()) is not None and data:
            self._feed(data)
        self.line_no = self.batcher.take(self.path, self.line_no, self.splitter.finish())
        log.info("archiver.follow_rotated", path=self.path, byte_offset=self.read_to)
        if not self.backlog:
            files, compressed = follow.backlog_after(self.path, old.fd, old.identity)
            if not files:
                return  # the new file vanished again: keep the old one
            self._take_backlog(files, compressed)
        nxt = self._begin_backlog()
        if nxt.name != self.path:
            log.info("archiver.follow_rotation_unread", path=self.path, file=nxt.name)
        os.close(old.fd)
        await self._commit(force=True)

    # saving

    def _position(self) -> follow.FollowPosition:
        assert self.opened is not None
        offset = self.splitter.consumed
        return follow.FollowPosition(
            self.opened.identity[0],
            self.opened.identity[1],
            offset,
            self.line_no,
            follow.fingerprint(self.opened.fd, offset),
        )

    def _dirty(self) -> bool:
        if self.batcher.ids:
            return True
        if self.opened is None:
            return False
        saved = self.saved
        return (
            saved is None
            or (saved.device, saved.inode) != self.opened.identity
            or saved.byte_offset != self.splitter.consumed
        )

    async def _commit(self, *, force: bool = False) -> None:
        if self.opened is None:
            await self.batcher.commit()
            return
        if not force and not self._dirty():
            return
        if follow.rewritten(self.opened.fd, self.read_to, self.tail):
            # Truncated (and maybe written again) since the last read: a fingerprint taken
            # now would describe the new bytes, and a restart would resume in them. Queue
            # the IDs; the position moves once the next look has dealt with the truncation.
            await self.batcher.commit()
            return
        new = self._position()
        old = self.saved

        async def save(conn: AsyncConnection) -> None:
            await follow.save_position(conn, self.path, old, new)

        await self.batcher.commit(save)
        self.saved = new
        log.debug("archiver.follow_committed", path=self.path, byte_offset=new.byte_offset)

    def close(self) -> None:
        if self.opened is not None:
            os.close(self.opened.fd)
            self.opened = None
        for rotated in self.backlog:
            os.close(rotated.fd)
        self.backlog = []
