"""Rows of the content-addressed tables that nothing references any more, removed online.

``tool_sets`` (each distinct ``tools`` array, named by ``responses.tool_set_id``) and
``input_item_contents`` (each distinct input item, listed by ``response_input_items``)
are written by many responses and deleted by none: a response archived again with other
tools or other input items (or renormalized into another tools value) leaves its old
row behind. ``archiver compact`` removes them with :func:`sweep_orphans`, beside running
writers, without a writer ever storing a reference to a row it deleted:

- **Candidates are found without any lock**, a page at a time: first the change counter
  ``S`` (``archive_changes.seq``, as committed), then the rows no response references.
  Every transaction that writes a reference (the writer, renormalize, compact's own
  rebuild) takes the counter lock, gives the responses it writes new ``change_seq``
  values above the counter, and keeps the lock until it commits; so a reference that
  appears after the scan is in a response whose ``change_seq`` is above ``S``.
- **Each page is deleted in one short transaction that takes the counter lock**
  (:func:`archiver.projection.lock_writers_sync`: every writer in progress commits first,
  the next ones wait) and deletes only the candidates that no response written since
  ``S`` references. That check reads only the responses written since the scan (the
  ``change_seq`` index), not the whole table, so writers wait milliseconds, not a scan.
- **Writers' caches follow the sweeps.** A writer resolves a ``tools`` value to its id
  from an in-process cache (:class:`archiver.tool_sets.ToolSetIds`), which may hold the id
  of a set it used long ago and that nobody references now. A sweep that deletes tool
  sets counts itself in ``archive_meta`` row ``tool_sets_swept``, in its transaction; the
  writer reads that row under the counter lock before it resolves, and forgets its cache
  when the count moved. An id it got from the cache is therefore one that no sweep
  removed since it was resolved, and one it inserts or selects is in its own transaction,
  which holds the lock a sweep needs. Input items have no cache: the writer inserts each
  item (``ON CONFLICT DO NOTHING``) and lists it in one transaction under the lock.
- **Ids are never used twice.** PostgreSQL's serial sequence never goes back; SQLite
  gives an ``INTEGER PRIMARY KEY`` without ``AUTOINCREMENT`` the highest id plus one, so
  the sweep never deletes the tool set with the highest id (one row at most stays).
  A deleted set that comes back gets a new id; no reference ever names another value.

Each page commits on its own: a crash leaves every page deleted or not, and running
compact again finds what is left. Codec dictionaries are not swept: see README,
Decisions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.elements import TextClause

from archiver.db import statement_at_a_time, with_db_retry
from archiver.logs import get_logger
from archiver.projection import lock_writers_sync, read_meta_sync, write_meta_sync
from archiver.tool_sets import SWEPT_KEY

__all__ = ["OrphanCounts", "sweep_orphans"]

log = get_logger()

PAGE = 1000
"""Candidates found, and deleted in one transaction, at a time."""

_COUNTER = text("SELECT seq FROM archive_changes WHERE name = 'archive'")


@dataclass(frozen=True, slots=True)
class _Orphans:
    """How to find and delete the unreferenced rows of one table."""

    name: str
    find: TextClause
    """Keys after ``:after`` that nothing references, in key order, at most ``:n``."""
    drop: TextClause
    """Delete ``:keys`` that no response written after change ``:seq`` references."""


_TOOL_SETS = _Orphans(
    "tool_sets",
    # Never the highest id: on SQLite the next insert would take it again.
    text(
        "SELECT id FROM tool_sets WHERE id > :after AND id < (SELECT max(id) FROM tool_sets) "
        "EXCEPT SELECT tool_set_id FROM responses ORDER BY 1 LIMIT :n"
    ),
    text(
        "DELETE FROM tool_sets WHERE id IN :keys AND id NOT IN "
        "(SELECT tool_set_id FROM responses WHERE change_seq > :seq AND tool_set_id IS NOT NULL)"
    ).bindparams(bindparam("keys", expanding=True)),
)
_INPUT_ITEMS = _Orphans(
    "input_item_contents",
    text(
        "SELECT sha256 FROM input_item_contents WHERE sha256 > :after "
        "EXCEPT SELECT item_sha256 FROM response_input_items ORDER BY 1 LIMIT :n"
    ),
    text(
        "DELETE FROM input_item_contents WHERE sha256 IN :keys AND sha256 NOT IN "
        "(SELECT l.item_sha256 FROM response_input_items AS l "
        "JOIN responses AS r ON r.id = l.response_id WHERE r.change_seq > :seq)"
    ).bindparams(bindparam("keys", expanding=True)),
)


@dataclass(slots=True)
class OrphanCounts:
    """Unreferenced rows a sweep removed, per table."""

    tool_sets: int = 0
    input_items: int = 0

    @property
    def total(self) -> int:
        """All rows removed."""
        return self.tool_sets + self.input_items

    def as_dict(self) -> dict[str, int]:
        """The counts, for JSON output."""
        return {"tool_sets": self.tool_sets, "input_items": self.input_items}


async def sweep_orphans(engine: AsyncEngine, *, page: int = PAGE) -> OrphanCounts:
    """Delete the tool sets and input items nothing references (see the module docstring).

    Safe beside any number of running writers, on SQLite and PostgreSQL.

    Args:
        engine: the archive.
        page: candidates per transaction.

    Returns:
        how many rows of each table it deleted.
    """
    return OrphanCounts(
        tool_sets=await _sweep(engine, _TOOL_SETS, page, after=0),
        input_items=await _sweep(engine, _INPUT_ITEMS, page, after=""),
    )


async def _sweep(engine: AsyncEngine, orphans: _Orphans, page: int, *, after: Any) -> int:
    dropped = 0
    while True:
        async with statement_at_a_time(engine) as conn:  # no lock: the counter first, then the scan
            seq = (await conn.execute(_COUNTER)).scalar()
            keys = list((await conn.execute(orphans.find, {"after": after, "n": page})).scalars())
        if not keys:
            return dropped
        if seq is None:  # the counter row was removed by hand: there is no lock to take
            log.warning("archiver.orphans_kept", table=orphans.name, reason="archive_changes has no row")
            return dropped

        async def drop(batch: Sequence[Any] = keys, seq: int = int(seq)) -> int:
            async with engine.begin() as conn:
                return await conn.run_sync(_drop_sync, orphans, batch, seq)

        dropped += await with_db_retry(drop)
        after = keys[-1]


def _drop_sync(conn: Connection, orphans: _Orphans, keys: Sequence[Any], seq: int) -> int:
    lock_writers_sync(conn)
    dropped = int(conn.execute(orphans.drop, {"keys": list(keys), "seq": seq}).rowcount or 0)
    if dropped and orphans is _TOOL_SETS:  # writers forget the ids they cached
        write_meta_sync(conn, SWEPT_KEY, str(int(read_meta_sync(conn, SWEPT_KEY) or 0) + 1))
    return dropped
