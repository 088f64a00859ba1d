"""Writing fetch results: archive rows and queue transitions, one transaction per batch.

Every queue update is fenced by the lease token: a result whose row was meanwhile
re-leased to another worker (our lease expired) is dropped, archive rows included, so a
slow worker can never overwrite newer work. Re-archiving an ID replaces its rows inside
the same transaction; identical bytes only refresh ``fetched_at``.

The batch's rows are written by :mod:`archiver.response_upsert` and
:mod:`archiver.queue_moves`, its bodies compressed by :mod:`archiver.dictionaries`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from archiver.archive_rows import ArchiveRows, in_chunks
from archiver.archived_bodies import read_bodies
from archiver.db import now_sql
from archiver.dictionaries import WritingCodec
from archiver.normalize import NormalizedResponse
from archiver.outcomes import Archived, Outcome
from archiver.queue import Job
from archiver.queue_moves import move_queue_rows
from archiver.reprojection import Reprojection, rewrite_projection
from archiver.response_upsert import write_responses
from archiver.sqlite_engine import sqlite_write_engine
from archiver.sqlite_file import check_same_file
from archiver.tool_sets import ToolSetIds


@dataclass(frozen=True, slots=True)
class FetchResult:
    """One finished fetch, ready to be written.

    ``normalized`` is set for :class:`Archived` outcomes; ``next_delay_s`` is when the row
    becomes due again for non-terminal snapshots.
    """

    job: Job
    outcome: Outcome
    fetched_at: datetime
    normalized: NormalizedResponse | None = None
    input_items: list[dict[str, Any]] | None = None
    input_list: dict[str, Any] | None = None
    """The ``input_item_lists`` row (a list's own fields), when ``input_items`` has one."""
    next_delay_s: float = 0.0
    duration_s: float = 0.0
    requests: int = 1

    def without_input_items(self) -> FetchResult:
        """This result without its input items (which may be large), for bookkeeping."""
        if self.input_items is None and self.input_list is None:
            return self
        return replace(self, input_items=None, input_list=None)


OUTCOME_COUNTS = ("archived", "unchanged", "repolled", "retried", "not_found", "failed", "lost_lease")
"""The per-outcome counters that :class:`WriteReport` and ``worker.RunSummary`` share."""


@dataclass(slots=True)
class WriteReport:
    """What one batch write did, for logs and metrics."""

    archived: int = 0
    unchanged: int = 0
    repolled: int = 0
    retried: int = 0
    not_found: int = 0
    failed: int = 0
    lost_lease: int = 0
    rows_written: int = 0
    lost_ids: list[str] = field(default_factory=list)

    def merge(self, other: WriteReport) -> None:
        """Add another report's counts to this one."""
        for name in (*OUTCOME_COUNTS, "rows_written"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.lost_ids.extend(other.lost_ids)


class ArchiveStore:
    """Applies batches of :class:`FetchResult` to the database.

    The work is synchronous code over one :class:`~sqlalchemy.engine.Connection`
    (:meth:`write_batch_sync`). :meth:`write_batch` runs it on the AsyncEngine through
    ``run_sync``, or, with ``write_thread`` on a SQLite file, on a synchronous engine in a
    thread of the store's own: one hand-off per batch instead of a round trip between the
    event loop and aiosqlite's thread per statement, so the file's write lock is held
    for the statements only (bench/README.md has the figures). Call :meth:`close` at the end.

    Args:
        engine: the open database.
        max_polls: snapshots of an unfinished response before its ID fails.
        write_thread: write SQLite batches on the store's own thread (ignored on
            PostgreSQL and for an in-memory database).
    """

    def __init__(self, engine: AsyncEngine, *, max_polls: int = 200, write_thread: bool = False) -> None:
        self.engine = engine
        self._write_engine: Engine | None = None
        self._write_thread: ThreadPoolExecutor | None = None
        if write_thread:
            self._write_engine = sqlite_write_engine(engine)
        if self._write_engine is not None:
            self._write_thread = ThreadPoolExecutor(1, thread_name_prefix="archiver-write")
        self.dialect = engine.dialect.name
        self.now = now_sql(self.dialect)
        self.max_polls = max_polls
        self.tool_sets = ToolSetIds()
        # One round trip: which rows we still lease, and what is archived for them already.
        self._owned_stmt = text(
            "SELECT q.id, q.lease_token, r.raw_sha256, r.input_items_sha256 FROM archive_queue AS q "
            "LEFT JOIN responses AS r ON r.id = q.id WHERE q.id IN :ids AND q.state = 'in_flight'"
            + (" FOR UPDATE OF q" if self.dialect == "postgresql" else "")
        ).bindparams(bindparam("ids", expanding=True))
        self.writing_codec = WritingCodec()
        """How new bodies are compressed, and the dictionary upkeep after a batch."""
        self.rows = ArchiveRows(engine.dialect)

    async def write_batch(self, results: Sequence[FetchResult]) -> WriteReport:
        """Write a batch in one transaction and return what happened."""
        if not results:
            return WriteReport()
        if self._write_engine is not None:
            return await asyncio.get_running_loop().run_in_executor(
                self._write_thread, self._write_on_own_engine, results
            )
        async with self.engine.begin() as conn:
            report = await conn.run_sync(self.write_batch_sync, results)
        self.tool_sets.confirm()
        if self.writing_codec.upkeep_due:
            async with self.engine.connect() as conn:
                await conn.run_sync(self.writing_codec.upkeep)
        return report

    def _write_on_own_engine(self, results: Sequence[FetchResult]) -> WriteReport:
        assert self._write_engine is not None
        with self._write_engine.begin() as conn:
            report = self.write_batch_sync(conn, results)
        self.tool_sets.confirm()
        if self.writing_codec.upkeep_due:
            with self._write_engine.connect() as conn:
                self.writing_codec.upkeep(conn)
        return report

    def write_batch_sync(self, conn: Connection, results: Sequence[FetchResult]) -> WriteReport:
        """Write a batch in the transaction open on ``conn``; the work of :meth:`write_batch`.

        Call ``self.tool_sets.confirm()`` once the transaction has committed.
        """
        self.tool_sets.begin()
        report = WriteReport()
        owned, existing = self._owned(conn, [r.job.response_id for r in results])
        kept: list[FetchResult] = []
        for r in results:
            if owned.get(r.job.response_id) == r.job.lease_token:
                kept.append(r)
            else:
                report.lost_lease += 1
                report.lost_ids.append(r.job.response_id)
        archived = [r for r in kept if isinstance(r.outcome, Archived) and r.normalized is not None]
        if archived:
            write_responses(
                conn,
                archived,
                existing,
                report,
                rows=self.rows,
                writing_codec=self.writing_codec,
                tool_sets=self.tool_sets,
            )
        move_queue_rows(conn, kept, report, dialect=self.dialect, now=self.now, max_polls=self.max_polls)
        # Last before the commit: a SQLite file deleted or replaced during the run still
        # takes writes, into a file that is no longer the archive.
        check_same_file(conn)
        return report

    def _owned(
        self, conn: Connection, ids: list[str]
    ) -> tuple[dict[str, str], dict[str, tuple[str, str | None]]]:
        """(lease token per ID still in flight, (raw_sha256, input_items_sha256) per archived ID)."""
        owned: dict[str, str] = {}
        existing: dict[str, tuple[str, str | None]] = {}
        for chunk in in_chunks(ids):
            for rid, token, sha, input_sha in conn.execute(self._owned_stmt, {"ids": chunk}).fetchall():
                owned[rid] = token
                if sha is not None:
                    existing[rid] = (sha, input_sha)
        return owned, existing

    def rewrite_projection_sync(self, conn: Connection, rewrites: Sequence[Reprojection]) -> int:
        """Replace the normalized rows of archived responses in the transaction open on ``conn``
        (:func:`archiver.reprojection.rewrite_projection`, with this store's tool sets).

        Call ``self.tool_sets.confirm()`` once the transaction has committed.

        Returns:
            rows written (responses and child rows).
        """
        return rewrite_projection(conn, rewrites, rows=self.rows, tool_sets=self.tool_sets)

    def close(self, *, wait: bool = True) -> None:
        """Stop the write thread and its engine, if there are (``engine`` is the caller's).

        ``wait=False``: do not wait for a write still running on the thread (a stop past its
        deadline, see :mod:`archiver.deadline`); the process ends without it.
        """
        if self._write_thread is not None:
            self._write_thread.shutdown(wait=wait, cancel_futures=not wait)
            self._write_thread = None
        if self._write_engine is not None:
            self._write_engine.dispose()
            self._write_engine = None

    async def raw_body(self, response_id: str) -> bytes | None:
        """The archived body exactly as received (decoded), or None.

        Raises:
            MissingDictionary: the body's dictionary is not in the database.
            DamagedBody: the stored body does not decode to the bytes received.
        """
        async with self.engine.connect() as conn:
            bodies = await read_bodies(conn, [response_id])
        return bodies.get(response_id)
