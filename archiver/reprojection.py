"""Rewriting the projection of stored responses: new normalized rows from ``raw``.

Used by ``archiver renormalize`` and ``archiver compact`` (:mod:`archiver.rebuild`) through
:meth:`archiver.store.ArchiveStore.rewrite_projection_sync`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.engine import Connection

from archiver.archive_rows import ArchiveRows, in_chunks, scrub_nul
from archiver.normalize import NormalizedResponse
from archiver.projection import archive_mode_sync, keep_children
from archiver.schema import CHILD_TABLES, input_item_lists, responses
from archiver.tool_sets import ToolSetIds


@dataclass(frozen=True, slots=True)
class Reprojection:
    """New normalized rows for an archived response (see :func:`rewrite_projection`).

    ``body`` is the body as received; ``stored`` the new ``(raw, raw_codec, raw_dict_id)``
    when ``raw`` is re-encoded too (``archiver compact``), else None.
    """

    response_id: str
    body: bytes
    normalized: NormalizedResponse
    stored: tuple[bytes, str, int | None] | None = None


def rewrite_projection(
    conn: Connection, rewrites: Sequence[Reprojection], *, rows: ArchiveRows, tool_sets: ToolSetIds
) -> int:
    """Replace the normalized rows of archived responses in the transaction open on ``conn``.

    The ``responses`` row keeps ``raw`` (unless a rewrite re-encodes it),
    ``fetched_at``, ``archived_at`` and its input items, and gets every normalized
    column and a new ``change_seq`` (so exports carry the new rows); its child rows
    from ``raw`` are deleted and inserted again, in the archive's mode. The caller
    has checked, in this transaction, that the rows are still the ones it read, and
    calls ``tool_sets.confirm()`` once it has committed.

    Args:
        rows: the archive's rows on this database.
        tool_sets: the writer's tool sets.

    Returns:
        rows written (responses and child rows).
    """
    tool_sets.begin()
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
        rows.delete_children(conn, chunk)
    first_seq = rows.next_change_seqs(conn, len(rewrites))
    mode = archive_mode_sync(conn)
    scrub = rows.dialect == "postgresql"
    tool_set_ids = tool_sets.resolve_sync(
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
        rows.insert(conn, responses, inserts)
    written = len(rewrites)
    for table in CHILD_TABLES:
        table_inserts = child_rows.get(table.name)
        if table_inserts:
            rows.insert(conn, table, table_inserts)
            written += len(table_inserts)
    # The input-item list (not from raw, kept as it is) follows its response's change_seq.
    conn.execute(
        update(input_item_lists)
        .where(input_item_lists.c.response_id == bindparam("rid"))
        .values(change_seq=bindparam("seq")),
        [{"rid": rewrite.response_id, "seq": first_seq + offset} for offset, rewrite in enumerate(rewrites)],
    )
    return written
