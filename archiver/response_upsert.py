"""Archiving responses: a batch's responses written with their child rows and input items.

Re-archiving an ID replaces its rows inside the batch's transaction; identical bytes (and
identical input items) only refresh ``fetched_at``. Bodies are compressed with the
writer's dictionary (:mod:`archiver.dictionaries`), and every response gets the next
change sequence number, which its child rows carry too (exports follow it).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, delete, update
from sqlalchemy.engine import Connection

from archiver.archive_rows import ArchiveRows, in_chunks, scrub_nul
from archiver.dictionaries import WritingCodec
from archiver.jsontext import json_bytes
from archiver.outcomes import Archived
from archiver.projection import archive_mode_sync, keep_children
from archiver.schema import CHILD_TABLES, input_item_lists, response_input_items, responses
from archiver.tool_sets import ToolSetIds

if TYPE_CHECKING:
    from archiver.store import FetchResult, WriteReport


def _input_items_digest(rows: list[dict[str, Any]], input_list: dict[str, Any] | None) -> str:
    """SHA-256 of the input items as received (their JSON, in order), and of the list's
    own fields when it has any (lists without them keep the digest they always had)."""
    digest = hashlib.sha256(json_bytes([row["item"] for row in rows]))
    if input_list is not None:
        digest.update(json_bytes(input_list, sort_keys=True))
    return digest.hexdigest()


def write_responses(
    conn: Connection,
    results: list[FetchResult],
    existing: dict[str, tuple[str, str | None]],
    report: WriteReport,
    *,
    rows: ArchiveRows,
    writing_codec: WritingCodec,
    tool_sets: ToolSetIds,
) -> None:
    """Write the archived ``results`` in the transaction open on ``conn``, counting them in ``report``.

    Args:
        existing: (``raw_sha256``, ``input_items_sha256``) of each ID archived already.
        rows: the archive's rows on this database.
        writing_codec: what new bodies are compressed with.
        tool_sets: the tool sets of this transaction (``begin()`` was called).
    """
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
        rows.delete_children(conn, chunk)
        conn.execute(delete(responses).where(responses.c.id.in_(chunk)))
    # Input items stored earlier survive a re-archive that did not fetch them.
    refetched_inputs = [rid for rid in changed if rid in input_digests]
    for chunk in in_chunks(refetched_inputs):
        conn.execute(delete(response_input_items).where(response_input_items.c.response_id.in_(chunk)))
        conn.execute(delete(input_item_lists).where(input_item_lists.c.response_id.in_(chunk)))
    scrub = rows.dialect == "postgresql"
    # Taken last-but-inserts: the counter row stays locked until commit, so change_seq
    # values become visible in increasing order even with several writers.
    first_seq = rows.next_change_seqs(conn, len(changed))
    # Read under the counter lock, which a mode switch takes too (archiver.projection).
    mode = archive_mode_sync(conn)
    encoder = writing_codec.checked(conn)
    writing_codec.note_written(first_seq + len(changed) - 1)
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
    for row, tool_set_id in zip(response_rows, tool_sets.resolve_sync(conn, tools), strict=True):
        row["tool_set_id"] = tool_set_id
    rows.insert(conn, responses, response_rows)
    report.rows_written += len(response_rows)
    for table in CHILD_TABLES:
        inserts = child_rows.get(table.name)
        if inserts:
            rows.insert(conn, table, inserts)
            report.rows_written += len(inserts)
    if input_rows:
        report.rows_written += rows.insert_input_items(conn, input_rows)
    if list_rows:
        rows.insert(conn, input_item_lists, list_rows)
        report.rows_written += len(list_rows)
    if kept_lists:
        conn.execute(
            update(input_item_lists)
            .where(input_item_lists.c.response_id == bindparam("rid"))
            .values(change_seq=bindparam("seq")),
            kept_lists,
        )
