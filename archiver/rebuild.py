"""Rebuilding the normalized rows of archived responses from ``raw``, online, in short batches.

The one loop behind ``archiver renormalize`` and ``archiver compact``. It walks
``responses`` in ``id`` order: reads a batch's bodies without holding any lock, decodes
them (:mod:`archiver.codec`), checks each against its ``raw_sha256``, normalizes it
(:func:`archiver.normalize.normalize_body`, the writer's own entry point), and then, in
one short write transaction per batch:

1. on PostgreSQL, locks the batch's ``archive_queue`` rows, in ``id`` order: the writer of
   a running daemon locks a response's queue row before it touches the response, so the
   two never interleave on one response (on SQLite, ``BEGIN IMMEDIATE`` serializes them);
2. keeps only the rows whose ``change_seq`` and ``raw_sha256`` are still the ones read:
   a response the daemon re-archived meanwhile already has rows from its new body, and is
   never overwritten with rows from the older one;
3. replaces their rows (:meth:`archiver.store.ArchiveStore.rewrite_projection_sync`) and,
   when the caller keeps one, saves the position (the batch's last ``id``) in
   ``archive_meta`` in the same transaction, so a crash loses at most the batch in flight
   and a rerun resumes after the last one committed.

Everything it does is idempotent: running it twice gives the same rows (with a newer
``change_seq``). Memory is bounded by the batch size and ``max_batch_bytes`` of bodies.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import zstandard
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from archiver.archive_rows import in_chunks
from archiver.codec import IDENTITY, Codec
from archiver.db_retry import log_db_retry, with_db_retry
from archiver.deadline import StopDeadline
from archiver.dictionaries import load_dictionaries
from archiver.echoes import body_echoes_secret, scrub_rows
from archiver.errors import ArchiverError
from archiver.logs import get_logger, redact
from archiver.normalize import normalize_body
from archiver.projection import write_meta_sync
from archiver.queue import archive_queue
from archiver.reprojection import Reprojection
from archiver.row_budget import ROWS_PER_WRITE, rows_to_write
from archiver.schema import responses
from archiver.settings import Settings
from archiver.sqlite_file import check_same_file
from archiver.store import ArchiveStore
from archiver.transactions import statement_at_a_time

log = get_logger()
T = TypeVar("T")

MAX_FAILURES_KEPT = 100
REBUILD_DB_ATTEMPTS = 12
"""Tries of each read and write transaction while the database error is transient."""

MASKED_BY_ANOTHER_KEY = (
    "its rows mask a key the server echoed that this process does not know: left as they are "
    "(run it with the archiving daemon's key: ARCHIVER_API_KEY, a key file or --config)"
)
"""Why a rebuild leaves a ``secret_masked`` response alone: rebuilt here, its rows would
hold the key unmasked (a rebuild masks only the secrets registered in its own process)."""


@dataclass(slots=True)
class RebuildReport:
    """What a rebuild did so far (the progress bar shows it; the summary line ends with it)."""

    total: int | None = None
    """Responses in scope when it started (None: not counted)."""
    done: int = 0
    """Responses looked at."""
    rewritten: int = 0
    """Responses whose rows were rebuilt (and, for compact, whose ``raw`` was re-encoded)."""
    rows_written: int = 0
    skipped: int = 0
    """Responses re-archived by a daemon meanwhile: their rows are from the newer body already."""
    failed: int = 0
    """Responses whose body could not be read or normalized: left exactly as they were."""
    unchanged: int = 0
    """compact: bodies that stay as they are stored (zstd would not make them smaller)."""
    stored_before: int = 0
    """compact: bytes of ``raw`` before re-encoding, over the rewritten responses."""
    stored_after: int = 0
    """compact: bytes of ``raw`` after."""
    failures: list[tuple[str, str]] = field(default_factory=list)
    """(ID, reason) of the first failures."""
    stopped: str | None = None
    """The signal that ended the walk early (it can be run again to finish)."""
    started: float = field(default_factory=time.monotonic)

    @property
    def elapsed_s(self) -> float:
        """Seconds since the rebuild started."""
        return time.monotonic() - self.started

    def fail(self, response_id: str, reason: str) -> None:
        """Count a response left as it was, and say why (logged; the first ones kept)."""
        self.failed += 1
        reason = redact(reason)
        if len(self.failures) < MAX_FAILURES_KEPT:
            self.failures.append((response_id, reason))
        log.warning("archiver.rebuild_failed", response_id=response_id, error=reason)

    def absorb_rewalk(self, again: RebuildReport) -> None:
        """Count a walk over the responses this one skipped (compact's walk again) into it:
        those it converted are no longer skipped (it may also find new rows, hence the floor)."""
        self.skipped = max(self.skipped - (again.done - again.skipped), 0) + again.skipped
        self.rewritten += again.rewritten
        self.rows_written += again.rows_written
        self.unchanged += again.unchanged
        self.stored_before += again.stored_before
        self.stored_after += again.stored_after
        self.failed += again.failed
        self.failures.extend(again.failures[: max(0, MAX_FAILURES_KEPT - len(self.failures))])
        self.stopped = again.stopped

    def failure_notes(self, verb: str) -> list[str]:
        """``archiver: ID not renormalized: why`` for stderr, the first ones kept, then how many more."""
        notes = [f"archiver: {rid} not {verb}: {why}" for rid, why in self.failures]
        if self.failed > len(self.failures):
            notes.append(f"archiver: and {self.failed - len(self.failures):,} more not {verb} (see the log)")
        return notes

    def detail(self) -> str:
        """The counts beside the progress bar, and in the summary line."""
        parts = [f"rewritten {self.rewritten:,}"]
        if self.unchanged:
            parts.append(f"left as stored {self.unchanged:,}")
        parts.append(f"re-archived meanwhile {self.skipped:,}")
        parts.append(f"failed {self.failed:,}")
        return ", ".join(parts)

    def summary_line(self, verb: str) -> str:
        """``renormalized 1,200 of 1,200 responses in 3.1s (387/s): rewritten ...``."""
        elapsed = self.elapsed_s
        rate = self.done / elapsed if elapsed > 0 else 0.0
        counted = f"{self.done:,} responses"
        if self.total is not None:  # counted at the start; a daemon beside it may add more
            counted = (
                f"{self.done:,} of {self.total:,} responses"
                if self.done <= self.total
                else f"{counted} ({self.total:,} when it started)"
            )
        return f"{verb} {counted} in {elapsed:.1f}s ({rate:,.0f}/s): {self.detail()}"

    def as_dict(self) -> dict[str, Any]:
        """The counts, for JSON output."""
        out = {
            name: getattr(self, name)
            for name in ("total", "done", "rewritten", "rows_written", "skipped", "failed", "unchanged")
        }
        out["duration_s"] = round(self.elapsed_s, 3)
        out["stopped"] = self.stopped
        if self.stored_before:
            out["stored_bytes_before"] = self.stored_before
            out["stored_bytes_after"] = self.stored_after
        out["failures"] = [{"response_id": rid, "error": why} for rid, why in self.failures]
        return out


class StopFlag:
    """Set by a stop signal (:func:`archiver.signals.on_stop_signals`): the walk ends after
    the batch in flight, its position saved."""

    def __init__(self, final_write_s: float = Settings.final_write_seconds) -> None:
        self.reason: str | None = None
        self.deadline = StopDeadline(final_write_s)
        """The batch in flight gets this long after the stop (see ``--final-write-seconds``)."""

    def __call__(self, reason: str) -> None:
        self.reason = reason
        self.deadline.start()


@dataclass(frozen=True, slots=True)
class _Candidate:
    response_id: str
    change_seq: int
    raw_sha256: str
    raw_codec: str | None
    stored_bytes: int


@dataclass(frozen=True, slots=True)
class _Stored:
    raw: bytes
    raw_codec: str | None
    raw_dict_id: int | None
    change_seq: int
    raw_sha256: str
    secret_masked: bool


@dataclass(slots=True)
class Position:
    """Where a resumable rebuild is, saved as ``archive_meta`` row ``key`` with every batch.

    ``state`` is what the caller needs to recognise its own run again (its scope); the
    position itself is ``state["after"]``, the last ``id`` committed.
    """

    key: str
    state: dict[str, Any]

    def encode(self, after: str) -> str:
        """The row's value once every ``id`` up to ``after`` is done."""
        self.state["after"] = after
        return json.dumps(self.state, sort_keys=True)


class Rebuilder:
    """Walks ``responses`` and rebuilds what it finds (see the module docstring).

    Args:
        engine: the open database.
        batch_size: responses per read and per write transaction.
        max_batch_bytes: a write transaction also closes once its bodies (decoded) reach this.
        encoder: re-encode ``raw`` with this codec too (``archiver compact``); a body whose
            encoding would stay ``identity`` is then left alone entirely.
        on_batch: called with the report after every committed batch.
        position: save the position with every batch (a resumable walk).
        report: count into this report (several walks, one summary).
        stop: end the walk after the batch in flight once this is set.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        batch_size: int,
        max_batch_bytes: int,
        encoder: Codec | None = None,
        on_batch: Callable[[RebuildReport], None] | None = None,
        position: Position | None = None,
        report: RebuildReport | None = None,
        stop: StopFlag | None = None,
    ) -> None:
        self.engine = engine
        self.store = ArchiveStore(engine)
        self.batch_size = batch_size
        self.max_batch_bytes = max_batch_bytes
        self.encoder = encoder
        self.on_batch = on_batch
        self.position = position
        self.report = report or RebuildReport()
        self.stop = stop
        self._reader = Codec()
        self._known_dicts: set[int] = set()

    async def _retried(self, work: Callable[[], Awaitable[T]]) -> T:
        return await retried(work, self.stop)

    async def walk(self, where: ColumnElement[bool], after: str = "") -> RebuildReport:
        """Rebuild every response matching ``where`` whose ``id`` sorts after ``after``."""
        while True:
            if self.stop is not None and self.stop.reason is not None:
                self.report.stopped = self.stop.reason
                return self.report
            candidates = await self._candidates(where, after)
            if not candidates:
                return self.report
            await self._rebuild(candidates)
            after = candidates[-1].response_id

    async def _candidates(self, where: ColumnElement[bool], after: str) -> list[_Candidate]:
        r = responses.c
        stmt = (
            select(r.id, r.change_seq, r.raw_sha256, r.raw_codec, func.length(r.raw))
            .where(where, r.id > after)
            .order_by(r.id)
            .limit(self.batch_size)
        )

        async def read() -> list[_Candidate]:
            async with statement_at_a_time(self.engine) as conn:  # no write lock for reading
                rows = (await conn.execute(stmt)).all()
            return [_Candidate(row[0], int(row[1]), row[2], row[3], int(row[4] or 0)) for row in rows]

        return await self._retried(read)

    async def _rebuild(self, candidates: list[_Candidate]) -> None:
        """Read, rebuild and write one batch of candidates, in slices of at most max_batch_bytes."""
        start = 0
        while start < len(candidates):
            end, size = start, 0
            while end < len(candidates) and (end == start or size < self.max_batch_bytes):
                size += candidates[end].stored_bytes
                end += 1
            piece = candidates[start:end]
            bodies = await self._read(piece)
            pending: list[tuple[_Candidate, Reprojection]] = []
            held = rows = 0
            for candidate in piece:
                rebuilt = self._prepare(candidate, bodies.pop(candidate.response_id, None))
                if rebuilt is not None:
                    pending.append((candidate, rebuilt))
                    held += len(rebuilt.body)
                    rows += rows_to_write(rebuilt.normalized.children)
                if (held >= self.max_batch_bytes or rows >= ROWS_PER_WRITE) and candidate is not piece[-1]:
                    # Decoded bodies can be many times their stored size, and their rows
                    # ~1 KB each (archiver.row_budget): write what is held.
                    await self._write(pending, candidate.response_id, done=0)
                    pending, held, rows = [], 0, 0
            await self._write(pending, piece[-1].response_id, done=len(piece))
            start = end

    async def _read(self, piece: Sequence[_Candidate]) -> dict[str, _Stored]:
        r = responses.c
        ids = [c.response_id for c in piece]
        stmt = select(r.id, r.raw, r.raw_codec, r.raw_dict_id, r.change_seq, r.raw_sha256, r.secret_masked)

        async def read() -> list[Any]:
            async with statement_at_a_time(self.engine) as conn:
                rows: list[Any] = []
                for chunk in in_chunks(ids):
                    rows += (await conn.execute(stmt.where(r.id.in_(chunk)))).all()
                wanted = {int(row[3]) for row in rows if row[3] is not None} - self._known_dicts
                if wanted:
                    for dict_id, data in (await load_dictionaries(conn, wanted)).items():
                        self._reader.add(dict_id, data)
                        self._known_dicts.add(dict_id)
            return rows

        rows = await self._retried(read)
        return {
            row[0]: _Stored(bytes(row[1]), row[2], row[3], int(row[4]), row[5], bool(row[6])) for row in rows
        }

    def _prepare(self, candidate: _Candidate, stored: _Stored | None) -> Reprojection | None:
        """The new rows of one response, or None (counted) when it is left as it is."""
        rid = candidate.response_id
        if stored is None or (stored.change_seq, stored.raw_sha256) != (
            candidate.change_seq,
            candidate.raw_sha256,
        ):  # deleted or re-archived since it was listed: the newer write stands
            self.report.skipped += 1
            return None
        try:
            body = self._reader.decode(stored.raw, stored.raw_codec, stored.raw_dict_id)
        except (ArchiverError, zstandard.ZstdError) as exc:
            self.report.fail(rid, f"cannot decode raw: {exc}")
            return None
        if hashlib.sha256(body).hexdigest() != stored.raw_sha256:
            self.report.fail(rid, "raw does not match its raw_sha256: left as it is")
            return None
        try:
            normalized = normalize_body(body)
        except Exception as exc:  # a body this version cannot normalize stays as it was
            self.report.fail(rid, f"normalization failed: {type(exc).__name__}: {exc}")
            return None
        if body_echoes_secret(body):  # a key the server echoed stays in raw only
            normalized = scrub_rows(normalized)
        elif stored.secret_masked:  # masked by a process that knew a key this one does not
            self.report.fail(rid, MASKED_BY_ANOTHER_KEY)
            return None
        encoded = None
        if self.encoder is not None:
            encoded = self.encoder.encode(body)
            if encoded[1] == IDENTITY and candidate.raw_codec == IDENTITY:
                self.report.unchanged += 1
                return None
        return Reprojection(rid, body, normalized, encoded)

    async def _write(
        self, pending: list[tuple[_Candidate, Reprojection]], last_id: str, *, done: int
    ) -> None:
        def write(conn: Connection) -> tuple[int, int, int, int]:
            kept = self._still_as_read(conn, pending)
            rows = self.store.rewrite_projection_sync(conn, [rewrite for _, rewrite in kept])
            if self.position is not None:
                write_meta_sync(conn, self.position.key, self.position.encode(last_id))
            check_same_file(conn)
            before = sum(c.stored_bytes for c, rw in kept if rw.stored is not None)
            after = sum(len(rw.stored[0]) for _, rw in kept if rw.stored is not None)
            return len(kept), rows, before, after

        async def transaction() -> tuple[int, int, int, int]:
            async with self.engine.begin() as conn:
                return await conn.run_sync(write)

        if pending or self.position is not None:
            kept, rows, before, after = await self._retried(transaction)
            self.store.tool_sets.confirm()
        else:  # nothing to write: no write lock either
            kept = rows = before = after = 0
        self.report.rewritten += kept
        self.report.skipped += len(pending) - kept
        self.report.rows_written += rows
        self.report.stored_before += before
        self.report.stored_after += after
        self.report.done += done
        if done and self.on_batch is not None:
            self.on_batch(self.report)

    def _still_as_read(
        self, conn: Connection, pending: list[tuple[_Candidate, Reprojection]]
    ) -> list[tuple[_Candidate, Reprojection]]:
        """The rewrites whose response is unchanged since it was read (locked on PostgreSQL)."""
        if not pending:
            return []
        ids = sorted(c.response_id for c, _ in pending)
        r = responses.c
        chunks = list(in_chunks(ids))
        current: dict[str, tuple[int, str]] = {}
        if conn.dialect.name == "postgresql":
            # The daemon's writer locks the queue row first too: same order, no interleaving.
            queue = archive_queue.c
            for chunk in chunks:
                conn.execute(
                    select(queue.id).where(queue.id.in_(chunk)).order_by(queue.id).with_for_update()
                ).all()
        for chunk in chunks:
            current_stmt = select(r.id, r.change_seq, r.raw_sha256).where(r.id.in_(chunk))
            if conn.dialect.name == "postgresql":
                current_stmt = current_stmt.order_by(r.id).with_for_update()
            current.update((row[0], (int(row[1]), row[2])) for row in conn.execute(current_stmt))
        return [(c, rw) for c, rw in pending if current.get(c.response_id) == (c.change_seq, c.raw_sha256)]


async def retried(work: Callable[[], Awaitable[T]], stop: StopFlag | None = None) -> T:
    """``work`` retried while the database error is transient (a lost connection, a lock,
    a restart), as long as the daemon's writer waits: a rebuild runs for hours beside it.
    Once ``stop`` is set, only until its deadline (:mod:`archiver.deadline`)."""
    deadline = None if stop is None else stop.deadline
    return await with_db_retry(work, on_retry=log_db_retry, attempts=REBUILD_DB_ATTEMPTS, deadline=deadline)
