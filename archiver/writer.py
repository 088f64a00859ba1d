"""The write step: normalize fetched bodies and apply batches to the database.

Two ways to run it, one behaviour:

- :class:`InlineWriter` writes in this process, on the event loop that also fetches.
- :class:`ProcessWriter` runs an :class:`InlineWriter` in a child interpreter
  (``python -m archiver.childproc``) and hands it batches over a pipe. Normalizing and
  inserting about eight rows per response is half of archiver's CPU time; in a child it
  runs on a second core instead of slowing the fetchers (bench/README.md has the figures).

The worker waits for each batch's report before it forgets the batch's rows, so the
child only ever holds rows that are still leased: if it dies, or the parent is killed,
those rows' leases expire and another run fetches them again (writes are idempotent).
The child ignores SIGINT, SIGTERM and SIGHUP (a terminal's Ctrl-C and systemd's stop
reach the whole process group) and exits when the parent closes its end of the pipe,
after the parent's last batch is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import signal
import struct
import subprocess
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from typing import IO, Any, Protocol

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from archiver import heap
from archiver.childproc import cores, start_writer_process
from archiver.db import open_database
from archiver.db_faults import database_error, db_error_message, permanent_db_fault
from archiver.db_retry import is_transient_db_error, log_db_retry, with_db_retry
from archiver.dburl import describe_database
from archiver.deadline import StopDeadline
from archiver.errors import ArchiverError, DatabaseUnavailable, WriterFailed, first_line
from archiver.jsontext import MAX_NESTING, STDLIB_FROM
from archiver.logs import configure_logging, emit_line, get_logger, logging_config, redact
from archiver.normalize import normalize_body
from archiver.outcomes import Archived, Permanent
from archiver.redaction import register_database_url
from archiver.row_budget import ROWS_PER_WRITE, rows_to_write
from archiver.settings import Settings
from archiver.store import ArchiveStore, FetchResult, WriteReport

log = get_logger()

_SEND_SLICE = 1 << 20
LARGE_BODY_BYTES = STDLIB_FROM
"""A body this large (the one threshold of "a large body": see ``body_head.SHALLOW_FROM``)
is normalized and written in a transaction of its own (see :meth:`InlineWriter.write`):
a batch closes at an eighth of ``--max-held-mb`` of bodies, so it may hold ~4 MiB of
smaller bodies, their rows kept parsed until written, before one of ``--max-body-mb``
(four dense bodies of 0.9 MiB then a 16 MiB one: +65 MiB)."""
_HEADER = struct.Struct("!I")
START_TIMEOUT_S = 60.0
CLOSE_TIMEOUT_S = 30.0


class BatchWriter(Protocol):
    """What the worker's writer task calls.

    ``depth`` is how many batches may be in :meth:`write` at once: the worker fills the
    next batch while earlier ones are written.
    """

    depth: int

    async def start(self) -> None:
        """Get ready to write (may return before the first write can run)."""

    async def write(self, batch: list[FetchResult], deadline: StopDeadline | None = None) -> WriteReport:
        """Write one batch in one transaction (or, after a poison result, one per result).

        A writer may empty ``batch`` once it holds the results elsewhere (the process
        writer, once sent): the caller keeps what it needs after the write itself.

        Raises:
            StopDeadlinePassed: ``deadline`` passed first; the batch may or may not be written.
        """

    async def close(self, deadline: StopDeadline | None = None) -> None:
        """Finish: every batch given to :meth:`write` has been written or has raised; at
        ``deadline`` (once it passed) without waiting for a write still running."""


def prepare(result: FetchResult) -> FetchResult:
    """Normalize an archived body into rows; a body that cannot be normalized fails its ID.

    The raw bytes are kept with the failure, for forensics.
    """
    outcome = result.outcome
    if not isinstance(outcome, Archived) or result.normalized is not None:
        return result
    try:
        normalized = normalize_body(outcome.raw, outcome.body)
    except Exception as exc:  # a poison body must not stop the run
        reason = f"normalization failed: {type(exc).__name__}: {exc}"
        log.warning(
            "archiver.fetch_failed",
            response_id=result.job.response_id,
            attempt=result.job.attempt,
            status_code=outcome.status_code,
            state="failed",
            error=redact(reason),
        )
        return replace(result, outcome=Permanent("failed", reason, outcome.status_code, outcome.raw))
    return replace(result, normalized=normalized)


class InlineWriter:
    """Writes batches in this process (see the module docstring).

    Args:
        store: the archive store of the open engine.
    """

    def __init__(self, store: ArchiveStore) -> None:
        self.store = store

    depth = 1  # concurrent transactions would only wait for each other's locks

    async def start(self) -> None:
        """Nothing to start."""

    async def close(self, deadline: StopDeadline | None = None) -> None:
        """Stop the store's write thread, if any; the engines belong to the caller.

        Past the stop deadline the thread is not waited for: a SQLite write waiting for
        another process's lock cannot be interrupted (see :mod:`archiver.deadline`).
        """
        self.store.close(wait=deadline is None or not deadline.passed)

    async def write(self, batch: list[FetchResult], deadline: StopDeadline | None = None) -> WriteReport:
        """Normalize, then write, in one transaction per :data:`ROWS_PER_WRITE` rows, and a
        body of :data:`LARGE_BODY_BYTES` or more in one of its own.

        Each result is normalized only once the rows before it are written, if they reach
        ``ROWS_PER_WRITE``: the rows of a whole batch of dense bodies would otherwise be in
        memory at once (see :mod:`archiver.row_budget`). A large body is normalized only
        once the results before it are written, and written before the next: its parse
        never sits beside another body's rows.
        """
        if not batch:
            return await self._write_prepared([], deadline)
        total = WriteReport()
        prepared: list[FetchResult] = []
        rows = 0
        for result in batch:
            large = _body_bytes(result) >= LARGE_BODY_BYTES
            if large and prepared:
                total.merge(await self._write_prepared(prepared, deadline))
                prepared, rows = [], 0
            prepared.append(prepare(result))
            rows += _row_count(prepared[-1])
            if large or rows >= ROWS_PER_WRITE:
                total.merge(await self._write_prepared(prepared, deadline))
                prepared, rows = [], 0
        if prepared:
            total.merge(await self._write_prepared(prepared, deadline))
        return total

    async def _write_prepared(
        self, prepared: list[FetchResult], deadline: StopDeadline | None
    ) -> WriteReport:
        """Write in one transaction; if that fails for a reason retrying cannot fix, find
        the culprit.

        The results are written again one at a time, and a result that still cannot be
        stored (a body the database or the JSON encoder refuses) marks its ID ``failed``
        with the error and the raw bytes kept, so one poison body never blocks the queue
        or crashes the run.
        """
        write = partial(self._write, deadline=deadline)
        try:
            return await write(prepared)
        except Exception as exc:
            self._raise_if_not_about_the_batch(exc)
            first_error = exc
        log.warning(
            "archiver.batch_write_failed", results=len(prepared), error=redact(first_line(first_error))
        )
        total = WriteReport()
        for result in prepared:
            try:
                report = await write([result])
            except Exception as exc:
                self._raise_if_not_about_the_batch(exc)
                raw = result.outcome.raw if isinstance(result.outcome, Archived) else None
                reason = f"cannot store the response: {type(exc).__name__}: {first_line(exc)}"
                log.warning(
                    "archiver.fetch_failed",
                    response_id=result.job.response_id,
                    attempt=result.job.attempt,
                    state="failed",
                    error=redact(reason),
                )
                poison = FetchResult(result.job, Permanent("failed", reason, 200, raw), result.fetched_at)
                report = await write([poison])
            total.merge(report)
        return total

    def _raise_if_not_about_the_batch(self, exc: Exception) -> None:
        """Re-raise what no single body caused: a transient error (retried by the caller),
        a database that refuses every write (disk full, read-only: one line, no SQL), a
        SQLite file that vanished. Only what is left may be a poison body."""
        if is_transient_db_error(exc) or isinstance(exc, ArchiverError):
            raise exc
        if permanent_db_fault(exc) is not None:
            raise database_error(exc, describe_database(self.store.engine.url)) from None

    async def _write(self, batch: Sequence[FetchResult], deadline: StopDeadline | None) -> WriteReport:
        return await with_db_retry(
            partial(self.store.write_batch, batch), on_retry=log_db_retry, attempts=12, deadline=deadline
        )


def _body_bytes(result: FetchResult) -> int:
    outcome = result.outcome
    return len(outcome.raw) if isinstance(outcome, Archived) else 0


def _row_count(result: FetchResult) -> int:
    normalized = result.normalized
    items = len(result.input_items) if result.input_items is not None else 0
    if normalized is None:
        return items
    return items + rows_to_write(normalized.children)


class ProcessWriter:
    """Writes batches in a child process (see the module docstring).

    Up to ``depth`` batches are in the pipe at once, so the child finds the next batch
    waiting when it finishes one. Reports come back in order.

    Args:
        settings: the run's settings; the child opens ``settings.database_url`` itself and
            never receives the API key.
        log_config: (level, json) for the child's logs, which go to the same stderr.
        process: the child, if it was started early (:mod:`archiver.childproc`); else
            :meth:`start` starts it.
    """

    depth = 2

    def __init__(
        self,
        settings: Settings,
        log_config: tuple[str, bool | None],
        process: subprocess.Popen[bytes] | None = None,
    ) -> None:
        self._init = {"settings": settings.with_changes(api_key=None), "log": log_config}
        self._started = process
        self._proc: _Child | None = None
        self._ready: asyncio.Future[None] | None = None
        self._waiting: deque[asyncio.Future[WriteReport]] = deque()
        self._send_lock = asyncio.Lock()
        self._frame_cut = False
        self._replies: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start the child, or take the one started early; it opens the database while
        the parent starts fetching."""
        process, self._started = self._started or start_writer_process(), None
        self._proc = await _Child.attach(process)
        self._ready = asyncio.get_running_loop().create_future()
        self._replies = asyncio.create_task(self._read_replies(self._proc), name="archiver.writer-replies")
        await self._send(self._init)

    async def write(self, batch: list[FetchResult], deadline: StopDeadline | None = None) -> WriteReport:
        """Send a batch and wait for its report (until ``deadline``, once a stop is requested).

        Raises:
            WriterFailed: the child could not write it (its message says why) or died.
            StopDeadlinePassed: ``deadline`` passed first; :meth:`close` then ends the child.
        """
        if deadline is None:
            return await self._write(batch)
        return await deadline.run(partial(self._write, batch))

    async def _write(self, batch: list[FetchResult]) -> WriteReport:
        assert self._ready is not None, "call start() first"
        await asyncio.wait_for(asyncio.shield(self._ready), START_TIMEOUT_S)
        reply: asyncio.Future[WriteReport] = asyncio.get_running_loop().create_future()
        self._waiting.append(reply)  # before sending: the reply may come before send returns
        try:
            await self._send(("write", batch))
            # Sent: the child has the results now. Letting go of them here frees input items
            # kept parsed (the caller keeps what it needs: see Worker._write).
            batch.clear()
        except WriterFailed:
            if reply in self._waiting:
                self._waiting.remove(reply)
            elif reply.done():  # the reply reader saw the exit first and failed every waiter
                reply.exception()  # retrieved: the WriterFailed below says the same
            raise
        return await reply

    async def close(self, deadline: StopDeadline | None = None) -> None:
        """Let the child finish and exit (it is killed if it does not within 30 s, or by
        ``deadline``: a batch cut there is rolled back, its rows' leases recover them)."""
        proc = self._proc
        if proc is None:
            return
        self._proc = None
        proc.stdin.close()
        left = None if deadline is None else deadline.left()
        try:
            await asyncio.wait_for(
                proc.wait(), CLOSE_TIMEOUT_S if left is None else min(left, CLOSE_TIMEOUT_S)
            )
        except TimeoutError:
            proc.kill()
            await proc.wait()
        await proc.lines_done()
        if self._replies is not None:
            await self._replies
        if self._ready is not None and self._ready.done() and not self._ready.cancelled():
            self._ready.exception()  # retrieved: write() raised it already, if anyone asked
        if proc.returncode:
            log.warning("archiver.writer_exited", exit_status=proc.returncode)

    async def _send(self, message: Any) -> None:
        proc = self._proc
        if proc is None:
            raise WriterFailed("the writer process is closed")
        data = _pickled(message)
        # No await between a reply's place in _waiting and this lock: frames go out in that order.
        async with self._send_lock:
            if self._frame_cut:
                raise WriterFailed(
                    "a batch was cut off at the stop deadline: the writer process takes no more"
                )
            written = 0
            try:
                proc.stdin.write(_HEADER.pack(len(data)))
                # In slices, draining between them: a multi-megabyte batch is then never
                # copied whole into the pipe transport's buffer (memory bounded by settings).
                view = memoryview(data)
                for start in range(0, len(data), _SEND_SLICE):
                    proc.stdin.write(view[start : start + _SEND_SLICE])
                    written = start + _SEND_SLICE
                    await proc.stdin.drain()
                await proc.stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                raise WriterFailed(f"the writer process exited (status {await proc.wait()})") from None
            except asyncio.CancelledError:
                # Cut at the stop deadline between slices: the pipe holds half a frame now.
                self._frame_cut = written < len(data)
                raise

    async def _read_replies(self, proc: _Child) -> None:
        assert self._ready is not None
        failure: ArchiverError | None = None
        while failure is None:
            try:
                header = await proc.stdout.readexactly(_HEADER.size)
                reply = pickle.loads(await proc.stdout.readexactly(_HEADER.unpack(header)[0]))  # noqa: S301 (our child)
            except asyncio.IncompleteReadError:
                failure = WriterFailed(f"the writer process exited (status {await proc.wait()})")
                break
            except Exception as exc:  # a reply that cannot be read must fail the writes, not hang them
                failure = WriterFailed(
                    f"unreadable reply from the writer process: {type(exc).__name__}: {exc}"
                )
                break
            if not self._ready.done():
                if reply == ("ready",):
                    self._ready.set_result(None)
                elif reply[0] == "fault":
                    name, fault = type(reply[1]).__name__, reply[1]
                    failure = WriterFailed(f"the writer process did not start: {name}: {fault}")
                else:
                    failure = WriterFailed(f"the writer process did not start: {_reply_error(reply)}")
            elif not self._waiting:
                failure = WriterFailed(f"unexpected reply from the writer process: {reply!r:.200}")
            else:
                waiter = self._waiting.popleft()
                if waiter.done():  # its caller was cancelled
                    continue
                if reply[0] == "report":
                    waiter.set_result(reply[1])
                elif reply[0] == "fault":
                    waiter.set_exception(reply[1])
                else:
                    waiter.set_exception(WriterFailed(f"the writer process failed: {_reply_error(reply)}"))
        if not self._ready.done():
            self._ready.set_exception(failure)
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_exception(failure)


def make_writer(
    settings: Settings, engine: AsyncEngine, mode: str, process: subprocess.Popen[bytes] | None = None
) -> BatchWriter:
    """The writer for ``mode`` (``auto``, ``process`` or ``inline``; see ``--writer``).

    ``process`` is a writer process started early (:mod:`archiver.childproc`); it is
    used, or killed if this database gets an inline writer after all.
    """
    if mode == "auto":
        # The early start (childproc.wants_process) judges the URL as text; this judges
        # the parsed URL, and a disagreement only costs the early process.
        mode = "process" if cores() >= 2 and engine.url.database not in (None, "", ":memory:") else "inline"
    if mode == "process":
        return ProcessWriter(settings, logging_config(), process)
    if process is not None:
        process.kill()  # its owner reaps it (childproc.discard)
    return InlineWriter(_write_threaded_store(engine, settings))


def _write_threaded_store(engine: AsyncEngine, settings: Settings) -> ArchiveStore:
    # On a SQLite file each batch is one call on the store's write thread (see ArchiveStore).
    return ArchiveStore(engine, max_polls=settings.max_polls, write_thread=True)


def _pickled(message: Any) -> bytes:
    """``message`` pickled for the writer process. Pickling recurses two levels a nesting
    level: the rows of a body 512 levels deep (``jsontext.MAX_NESTING``), which the
    parent sends when it scrubbed an echoed secret from them, need more than Python's
    default limit of 1,000 (unpickling does not recurse)."""
    try:
        return pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    except RecursionError:
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(limit + _PICKLE_LEVELS_PER_NESTING * (MAX_NESTING + _WRAPPING_LEVELS))
        try:
            return pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        finally:
            sys.setrecursionlimit(limit)


_PICKLE_LEVELS_PER_NESTING = 2
_WRAPPING_LEVELS = 16
"""Levels around a body's own in a message: the batch, its results, their rows."""


class _Child:
    """A started writer process, its pipes made asyncio streams."""

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        stdin: asyncio.StreamWriter,
        stdout: asyncio.StreamReader,
        log_lines: asyncio.Task[None] | None = None,
    ) -> None:
        self.process = process
        self.stdin = stdin
        self.stdout = stdout
        self.log_lines = log_lines

    @classmethod
    async def attach(cls, process: subprocess.Popen[bytes]) -> _Child:
        assert process.stdin is not None and process.stdout is not None
        loop = asyncio.get_running_loop()
        reader = await _frame_reader(process.stdout)
        transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, process.stdin)
        log_lines = None
        if process.stderr is not None:
            log_lines = asyncio.create_task(
                _forward_lines(await _frame_reader(process.stderr)), name="archiver.writer-stderr"
            )
        return cls(process, asyncio.StreamWriter(transport, protocol, None, loop), reader, log_lines)

    async def lines_done(self) -> None:
        """Wait (briefly) until every line the child wrote to stderr is passed on."""
        if self.log_lines is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self.log_lines), 5)

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    async def wait(self) -> int:
        """Wait for the exit (on a thread: the process is not asyncio's child)."""
        return await asyncio.to_thread(self.process.wait)

    def kill(self) -> None:
        self.process.kill()


def _reply_error(reply: Any) -> str:
    if isinstance(reply, tuple) and len(reply) == 2 and reply[0] == "error":
        return str(reply[1])
    return f"unexpected reply {reply!r:.200}"


# --- the child ------------------------------------------------------------------------------


async def _forward_lines(reader: asyncio.StreamReader) -> None:
    """Pass the writer process's stderr on, line by line, through :func:`archiver.logs.emit_line`."""
    while True:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as end:
            line = end.partial
        except asyncio.LimitOverrunError as long:
            line = await reader.read(long.consumed)
        if not line:
            return
        emit_line(line.decode("utf-8", errors="replace").rstrip("\r\n"))


async def _frame_reader(pipe: IO[bytes]) -> asyncio.StreamReader:
    """An asyncio reader over one end of the pipe between the two processes.

    No buffer limit: frames are read with ``readexactly`` and a batch may be large.
    """
    reader = asyncio.StreamReader(limit=2**31 - 1)
    await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
    return reader


async def _serve(read_fd: int, write_fd: int) -> None:
    reader = await _frame_reader(os.fdopen(read_fd, "rb", buffering=0))

    def reply_error(exc: BaseException) -> None:
        if isinstance(exc, ArchiverError):  # an expected fault: the parent raises it as it is
            reply(("fault", type(exc)(redact(str(exc)))))
        else:
            reply(("error", redact(f"{type(exc).__name__}: {db_error_message(exc)}")))

    def reply(message: Any) -> None:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        os.write(write_fd, _HEADER.pack(len(data)) + data)  # replies are small

    async def receive() -> Any:
        try:
            header = await reader.readexactly(_HEADER.size)
            data = await reader.readexactly(_HEADER.unpack(header)[0])
        except asyncio.IncompleteReadError:
            return None  # the parent closed the pipe (or died mid-frame): done
        return pickle.loads(data)  # noqa: S301 (our parent)

    init = await receive()
    if init is None:
        return
    settings: Settings = init["settings"]
    # The child never receives the API key; what it can know it masks: the passwords of
    # the URLs it was given (the database's, for its connection errors and logs).
    register_database_url(settings.database_url)
    register_database_url(settings.base_url)
    level, json = init["log"]
    configure_logging(level, json=json)
    try:
        # The parent created the file if it was missing: a file missing now was deleted.
        async with contextlib.AsyncExitStack() as stack:
            engine = await _open_retrying(stack, settings)
            writer = InlineWriter(_write_threaded_store(engine, settings))
            reply(("ready",))
            try:
                while (message := await receive()) is not None:
                    batch: list[FetchResult] = message[1]
                    del message
                    body_bytes = sum(len(r.outcome.raw) for r in batch if isinstance(r.outcome, Archived))
                    try:
                        report = await writer.write(batch)
                    except Exception as exc:
                        reply_error(exc)
                    else:
                        reply(("report", report))
                    del batch  # the bodies, their parse and their rows: then the heap they grew
                    heap.give_back(body_bytes)
            finally:
                await writer.close()
    except Exception as exc:
        reply_error(exc)


OPEN_RETRY_S = 30.0
"""How long the writer process tries to open the database while it is unavailable."""


async def _open_retrying(stack: contextlib.AsyncExitStack, settings: Settings) -> Any:
    """The writer process's engine, opened on ``stack``; an unavailable database (a restart
    under a running fleet: the parent already runs, and its rows are leased) is tried again
    with backoff for up to :data:`OPEN_RETRY_S` instead of ending the run at once (it did,
    "the writer process did not start", in 1 of 2 restarts under two runs). PostgreSQL
    only: a SQLite file that cannot be opened was deleted or broken, and fails at once."""
    delay, give_up = 0.2, time.monotonic() + OPEN_RETRY_S
    is_sqlite = make_url(settings.database_url).get_backend_name() == "sqlite"
    while True:
        opening = open_database(
            settings.database_url,
            pool_size=1,
            create=False,
            idle_in_transaction_s=settings.lease_seconds,
        )
        try:
            return await stack.enter_async_context(opening)
        except DatabaseUnavailable as exc:
            # A SQLite file does not restart: one that cannot be opened now is gone.
            if is_sqlite or time.monotonic() + delay > give_up:
                raise
            log_db_retry(exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def child_main() -> None:
    """The writer process (:func:`archiver.childproc.main`): serve batches from stdin until it closes."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    # Frames go out on a private copy of stdout; fd 1 becomes stderr, so a stray print
    # from any library can never corrupt the protocol.
    write_fd = os.dup(1)
    os.dup2(2, 1)
    read_fd = os.dup(0)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    heap.release()
    asyncio.run(_serve(read_fd, write_fd))
    # Everything is committed and the engine disposed. Skip the interpreter's teardown of
    # SQLAlchemy and friends: the parent waits for this exit (it took ~60 ms).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
