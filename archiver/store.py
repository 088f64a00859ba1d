"""Writing fetch results: archive rows and queue transitions, one transaction per batch.

Every queue update is fenced by the lease token: a result whose row was meanwhile
re-leased to another worker (our lease expired) is dropped, archive rows included, so a
slow worker can never overwrite newer work. Re-archiving an ID replaces its rows inside
the same transaction; identical bytes only refresh ``fetched_at``.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import (
    bindparam,
    delete,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from archiver.archive_rows import ArchiveRows, in_chunks, scrub_nul
from archiver.archived_bodies import read_bodies
from archiver.db import now_sql
from archiver.dictionaries import WritingCodec
from archiver.jsontext import json_bytes
from archiver.logs import get_logger
from archiver.normalize import NormalizedResponse
from archiver.outcomes import Archived, Outcome
from archiver.projection import archive_mode_sync, keep_children
from archiver.queue import Job
from archiver.queue_moves import move_queue_rows
from archiver.schema import (
    CHILD_TABLES,
    input_item_lists,
    response_input_items,
    responses,
)
from archiver.sqlite_engine import sqlite_write_engine
from archiver.sqlite_file import check_same_file
from archiver.tool_sets import ToolSetIds

log = get_logger()


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


def _input_items_digest(rows: list[dict[str, Any]], input_list: dict[str, Any] | None) -> str:
    """SHA-256 of the input items as received (their JSON, in order), and of the list's
    own fields when it has any (lists without them keep the digest they always had)."""
    digest = hashlib.sha256(json_bytes([row["item"] for row in rows]))
    if input_list is not None:
        digest.update(json_bytes(input_list, sort_keys=True))
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class Reprojection:
    """New normalized rows for an archived response (see :meth:`ArchiveStore.rewrite_projection_sync`).

    ``body`` is the body as received; ``stored`` the new ``(raw, raw_codec, raw_dict_id)``
    when ``raw`` is re-encoded too (``archiver compact``), else None.
    """

    response_id: str
    body: bytes
    normalized: NormalizedResponse
    stored: tuple[bytes, str, int | None] | None = None


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
            self._write_archive(conn, archived, existing, report)
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

    def _write_archive(
        self,
        conn: Connection,
        results: list[FetchResult],
        existing: dict[str, tuple[str, str | None]],
        report: WriteReport,
    ) -> None:
        # The last result per ID wins (a batch never holds two, but be safe).
        by_id: dict[str, FetchResult] = {r.job.response_id: r for r in results}
        digests = {rid: hashlib.sha256(r.outcome.raw).hexdigest() for rid, r in by_id.items()}  # type: ignore[union-attr]
        input_digests = {
            rid: _input_items_digest(r.input_items, r.input_list)
            for rid, r in by_id.items()
            if r.input_items is not None
        }

        def is_unchanged(rid: str) -> bool:
            old = existing.get(rid)
            if old is None or old[0] != digests[rid]:
                return False
            return rid not in input_digests or input_digests[rid] == old[1]

        unchanged = [rid for rid in by_id if is_unchanged(rid)]
        changed = [rid for rid in by_id if not is_unchanged(rid)]
        if unchanged:
            report.unchanged += len(unchanged)
            conn.execute(
                update(responses)
                .where(responses.c.id == bindparam("rid"))
                .values(fetched_at=bindparam("fetched")),
                [{"rid": rid, "fetched": by_id[rid].fetched_at} for rid in unchanged],
            )
        if not changed:
            return
        replaced = [rid for rid in changed if rid in existing]
        for chunk in in_chunks(replaced):
            self.rows.delete_children(conn, chunk)
            conn.execute(delete(responses).where(responses.c.id.in_(chunk)))
        # Input items stored earlier survive a re-archive that did not fetch them.
        refetched_inputs = [rid for rid in changed if rid in input_digests]
        for chunk in in_chunks(refetched_inputs):
            conn.execute(delete(response_input_items).where(response_input_items.c.response_id.in_(chunk)))
            conn.execute(delete(input_item_lists).where(input_item_lists.c.response_id.in_(chunk)))
        scrub = self.dialect == "postgresql"
        # Taken last-but-inserts: the counter row stays locked until commit, so change_seq
        # values become visible in increasing order even with several writers.
        first_seq = self.rows.next_change_seqs(conn, len(changed))
        # Read under the counter lock, which a mode switch takes too (archiver.projection).
        mode = archive_mode_sync(conn)
        encoder = self.writing_codec.checked(conn)
        self.writing_codec.note_written(first_seq + len(changed) - 1)
        response_rows: list[dict[str, Any]] = []
        tools: list[Any] = []
        child_rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
        input_rows: list[dict[str, Any]] = []
        list_rows: list[dict[str, Any]] = []
        kept_lists: list[dict[str, Any]] = []  # re-archived without their list: it follows
        for offset, rid in enumerate(changed):
            seq = first_seq + offset
            result = by_id[rid]
            assert result.normalized is not None and isinstance(result.outcome, Archived)
            raw = result.outcome.raw
            needs_scrub = scrub and (b"\\u0000" in raw or result.input_items is not None)
            row = dict(result.normalized.response)
            if needs_scrub:
                row = scrub_nul(row)
            old = existing.get(rid)
            stored, raw_codec, raw_dict_id = encoder.encode(raw)
            row.update(
                raw=stored,
                raw_codec=raw_codec,
                raw_dict_id=raw_dict_id,
                raw_sha256=digests[rid],
                fetched_at=result.fetched_at,
                archived_at=result.fetched_at,
                change_seq=seq,
                input_items_sha256=input_digests.get(rid, old[1] if old else None),
            )
            response_rows.append(row)
            tools.append(scrub_nul(result.normalized.tools) if needs_scrub else result.normalized.tools)
            if result.input_items is not None:
                input_rows.extend(scrub_nul(result.input_items) if needs_scrub else result.input_items)
                if result.input_list is not None:
                    list_row = scrub_nul(result.input_list) if needs_scrub else dict(result.input_list)
                    list_row["change_seq"] = seq
                    list_rows.append(list_row)
            elif old is not None:
                kept_lists.append({"rid": rid, "seq": seq})
            for table_name, table_rows in keep_children(result.normalized.children, mode).items():
                if not table_rows:
                    continue
                target = child_rows[table_name]
                for child in scrub_nul(table_rows) if needs_scrub else table_rows:
                    child["change_seq"] = seq
                    target.append(child)
        for row, tool_set_id in zip(response_rows, self.tool_sets.resolve_sync(conn, tools), strict=True):
            row["tool_set_id"] = tool_set_id
        self.rows.insert(conn, responses, response_rows)
        report.rows_written += len(response_rows)
        for table in CHILD_TABLES:
            inserts = child_rows.get(table.name)
            if inserts:
                self.rows.insert(conn, table, inserts)
                report.rows_written += len(inserts)
        if input_rows:
            report.rows_written += self.rows.insert_input_items(conn, input_rows)
        if list_rows:
            self.rows.insert(conn, input_item_lists, list_rows)
            report.rows_written += len(list_rows)
        if kept_lists:
            conn.execute(
                update(input_item_lists)
                .where(input_item_lists.c.response_id == bindparam("rid"))
                .values(change_seq=bindparam("seq")),
                kept_lists,
            )

    # --- renormalize and compact (archiver.rebuild): rewrite the projection of stored rows ---

    def rewrite_projection_sync(self, conn: Connection, rewrites: Sequence[Reprojection]) -> int:
        """Replace the normalized rows of archived responses in the transaction open on ``conn``.

        The ``responses`` row keeps ``raw`` (unless a rewrite re-encodes it),
        ``fetched_at``, ``archived_at`` and its input items, and gets every normalized
        column and a new ``change_seq`` (so exports carry the new rows); its child rows
        from ``raw`` are deleted and inserted again, in the archive's mode. The caller
        has checked, in this transaction, that the rows are still the ones it read, and
        calls ``self.tool_sets.confirm()`` once it has committed.

        Returns:
            rows written (responses and child rows).
        """
        self.tool_sets.begin()
        if not rewrites:
            return 0
        ids = [r.response_id for r in rewrites]
        moved = [r.response_id for r in rewrites if r.stored is not None]
        # A re-encoded body shrinks: its row is moved (deleted, inserted anew) rather than
        # updated in place, so the pages it leaves end up empty as a whole, which SQLite's
        # incremental vacuum can give back (bytes freed inside pages it cannot).
        kept: dict[str, Any] = {}
        for chunk in in_chunks(moved):
            r = responses.c
            stored_columns = select(r.id, r.raw_sha256, r.fetched_at, r.archived_at, r.input_items_sha256)
            kept.update((row.id, row) for row in conn.execute(stored_columns.where(r.id.in_(chunk))))
            conn.execute(delete(responses).where(r.id.in_(chunk)))
        for chunk in in_chunks(ids):
            self.rows.delete_children(conn, chunk)
        first_seq = self.rows.next_change_seqs(conn, len(rewrites))
        mode = archive_mode_sync(conn)
        scrub = self.dialect == "postgresql"
        tool_set_ids = self.tool_sets.resolve_sync(
            conn,
            [
                scrub_nul(r.normalized.tools) if scrub and b"\\u0000" in r.body else r.normalized.tools
                for r in rewrites
            ],
        )
        updates: list[dict[str, Any]] = []
        inserts: list[dict[str, Any]] = []
        child_rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for offset, rewrite in enumerate(rewrites):
            seq = first_seq + offset
            needs_scrub = scrub and b"\\u0000" in rewrite.body
            row = scrub_nul(rewrite.normalized.response) if needs_scrub else dict(rewrite.normalized.response)
            row["change_seq"] = seq
            row["tool_set_id"] = tool_set_ids[offset]
            row["id"] = rewrite.response_id  # the key as stored, whatever scrubbing did to the row
            if rewrite.stored is None:
                updates.append({"_rid": row.pop("id"), **{f"_{name}": value for name, value in row.items()}})
            else:
                old = kept[rewrite.response_id]
                row["raw"], row["raw_codec"], row["raw_dict_id"] = rewrite.stored
                row.update(
                    raw_sha256=old.raw_sha256,
                    fetched_at=old.fetched_at,
                    archived_at=old.archived_at,
                    input_items_sha256=old.input_items_sha256,
                )
                inserts.append(row)
            for table_name, table_rows in keep_children(rewrite.normalized.children, mode).items():
                for child in scrub_nul(table_rows) if needs_scrub else table_rows:
                    child["change_seq"] = seq
                    child_rows[table_name].append(child)
        if updates:
            names = [key[1:] for key in updates[0] if key != "_rid"]
            statement = (
                update(responses)
                .where(responses.c.id == bindparam("_rid"))
                .values({name: bindparam(f"_{name}", type_=responses.c[name].type) for name in names})
            )
            conn.execute(statement, updates)
        if inserts:
            self.rows.insert(conn, responses, inserts)
        written = len(rewrites)
        for table in CHILD_TABLES:
            table_inserts = child_rows.get(table.name)
            if table_inserts:
                self.rows.insert(conn, table, table_inserts)
                written += len(table_inserts)
        # The input-item list (not from raw, kept as it is) follows its response's change_seq.
        conn.execute(
            update(input_item_lists)
            .where(input_item_lists.c.response_id == bindparam("rid"))
            .values(change_seq=bindparam("seq")),
            [
                {"rid": rewrite.response_id, "seq": first_seq + offset}
                for offset, rewrite in enumerate(rewrites)
            ],
        )
        return written

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
