"""Rows of the content-addressed tables that nothing references any more, removed online.

``tool_sets`` (each distinct ``tools`` array, named by ``responses.tool_set_id``) and
``input_item_contents`` (each distinct input item, listed by ``response_input_items``)
are written by many responses and deleted by none: a response archived again with other
tools or other input items (or renormalized into another tools value) leaves its old
row behind. ``archiver compact`` removes them with :func:`sweep_orphans`, beside running
writers, without a writer ever storing a reference to a row it deleted:

- **Candidates are found without any lock, by one scan of each table**: first the change
  counter ``S`` (``archive_changes.seq``, as committed), then the rows no response
  references, into a temporary table of the connection that scanned (on disk past the
  database's cache: memory does not grow with the number of orphans). Every transaction
  that writes a reference (the writer, renormalize, compact's own rebuild) takes the
  counter lock, gives the responses it writes new ``change_seq`` values above the
  counter, and keeps the lock until it commits; so a reference that appears after the
  scan is in a response whose ``change_seq`` is above ``S``. The referencing table is
  read once (``EXCEPT``), not once a page: the page of candidates is read from the
  temporary table by key. Rows that lose their last reference during the sweep are left
  for the next one.
- **Each page is deleted in one short transaction that takes the counter lock**
  (:func:`archiver.projection.lock_writers_sync`: every writer in progress commits first,
  the next ones wait) and deletes only the candidates that no response written since
  ``S`` references. That check reads only the responses written since the scan (the
  ``change_seq`` index), not the whole table, so writers wait milliseconds, not a scan.
  Once more changes were written since ``S`` than :data:`RESCAN_AFTER`, or twice as
  many as during the scan itself (a busy daemon beside a long sweep), the rest is
  scanned again with a new ``S``, so that check stays short: past a few thousand
  responses PostgreSQL's planner reads every ``response_input_items`` row for it.
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
  The highest id only grows, so a candidate below it at the scan is below it at the
  delete. A deleted set that comes back gets a new id; no reference ever names another
  value.

Each page commits on its own: a crash leaves every page deleted or not, and running
compact again finds what is left. A lost connection (a PostgreSQL restart) takes the
temporary table with it: the sweep scans again from the last page it deleted. The
temporary table is dropped before its connection goes back to the pool. Codec
dictionaries are not swept: see README, Decisions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from types import TracebackType
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import TextClause

from archiver.db_retry import with_db_retry
from archiver.deadline import StopDeadline
from archiver.logs import get_logger
from archiver.projection import lock_writers_sync, read_meta_sync, write_meta_sync
from archiver.tool_sets import SWEPT_KEY
from archiver.transactions import is_postgres, statement_at_a_time

__all__ = ["OrphanCounts", "sweep_orphans"]

log = get_logger()

PAGE = 1000
"""Candidates deleted in one transaction."""

RESCAN_AFTER = 2_000
"""Changes written since the scan after which the candidates left are found again (unless
more were written during the scan: then twice as many). The delete of each page reads the
responses written since the scan under the writers' lock: 2,000 take it about 6 ms on
PostgreSQL at a million responses, where 10,000 made the planner read every listing
(0.56 s). Twice the changes of the scan keeps the scans, however busy the writers, to
half the sweep's time at most, and the lock to what the old sweep (a scan per page)
held."""

_COUNTER = text("SELECT seq FROM archive_changes WHERE name = 'archive'")


@dataclass(frozen=True, slots=True)
class _Orphans:
    """How to find and delete the unreferenced rows of one table."""

    name: str
    temp: str
    """The temporary table holding the candidates (column ``key``)."""
    columns: dict[str, str]
    """Its definition, per dialect."""
    find: str
    """The keys after ``:after`` that nothing references (any order)."""
    drop: TextClause
    """Delete ``:keys`` that no response written after change ``:seq`` references."""
    drop_postgres: TextClause | None = None
    """The same for PostgreSQL, when it needs another form."""


_TOOL_SETS = _Orphans(
    "tool_sets",
    "sweep_tool_sets",
    {"sqlite": "(key INTEGER PRIMARY KEY)", "postgresql": "(key INTEGER PRIMARY KEY)"},
    # Never the highest id: on SQLite the next insert would take it again.
    "SELECT id FROM tool_sets WHERE id > :after AND id < (SELECT max(id) FROM tool_sets) "
    "EXCEPT SELECT tool_set_id FROM responses",
    text(
        "DELETE FROM tool_sets WHERE id IN :keys AND id NOT IN "
        "(SELECT tool_set_id FROM responses WHERE change_seq > :seq AND tool_set_id IS NOT NULL)"
    ).bindparams(bindparam("keys", expanding=True)),
)
_INPUT_ITEMS = _Orphans(
    "input_item_contents",
    "sweep_input_items",
    {"sqlite": "(key TEXT PRIMARY KEY) WITHOUT ROWID", "postgresql": "(key VARCHAR(64) PRIMARY KEY)"},
    "SELECT sha256 FROM input_item_contents WHERE sha256 > :after "
    "EXCEPT SELECT item_sha256 FROM response_input_items",
    text(
        "DELETE FROM input_item_contents WHERE sha256 IN :keys AND sha256 NOT IN "
        "(SELECT l.item_sha256 FROM response_input_items AS l "
        "JOIN responses AS r ON r.id = l.response_id WHERE r.change_seq > :seq)"
    ).bindparams(bindparam("keys", expanding=True)),
    # NOT EXISTS, an anti-join: PostgreSQL runs the NOT IN above once per key when the
    # listings written since the scan outgrow work_mem (29 s under the lock for 50,000
    # responses of a million, 1.1 s this way). SQLite builds NOT IN's subquery once.
    text(
        "DELETE FROM input_item_contents AS c WHERE sha256 IN :keys AND NOT EXISTS "
        "(SELECT 1 FROM response_input_items AS l JOIN responses AS r ON r.id = l.response_id "
        "WHERE l.item_sha256 = c.sha256 AND r.change_seq > :seq)"
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


async def sweep_orphans(
    engine: AsyncEngine, *, page: int = PAGE, deadline: StopDeadline | None = None
) -> OrphanCounts:
    """Delete the tool sets and input items nothing references (see the module docstring).

    Safe beside any number of running writers, on SQLite and PostgreSQL.

    Args:
        engine: the archive.
        page: candidates per transaction.

    Returns:
        how many rows of each table it deleted.
    """
    return OrphanCounts(
        tool_sets=await _sweep(engine, _TOOL_SETS, page, after=0, deadline=deadline),
        input_items=await _sweep(engine, _INPUT_ITEMS, page, after="", deadline=deadline),
    )


async def _sweep(
    engine: AsyncEngine, orphans: _Orphans, page: int, *, after: Any, deadline: StopDeadline | None
) -> int:
    dropped = 0
    async with _Candidates(engine, orphans) as candidates:
        while True:
            seq, keys = await with_db_retry(partial(candidates.next_page, after, page), deadline=deadline)
            if not keys:
                return dropped
            if seq is None:  # the counter row was removed by hand: there is no lock to take
                log.warning("archiver.orphans_kept", table=orphans.name, reason="archive_changes has no row")
                return dropped
            delete = partial(_delete_page, engine, orphans, keys, seq)
            dropped += await (delete() if deadline is None else deadline.run(delete))
            after = keys[-1]


async def _delete_page(engine: AsyncEngine, orphans: _Orphans, keys: Sequence[Any], seq: int) -> int:
    """Delete one page of candidates found after change ``seq``, in one transaction."""

    async def drop() -> int:
        async with engine.begin() as conn:
            return await conn.run_sync(_drop_sync, orphans, keys, seq)

    return await with_db_retry(drop)


def _drop_sync(conn: Connection, orphans: _Orphans, keys: Sequence[Any], seq: int) -> int:
    lock_writers_sync(conn)
    drop = orphans.drop
    if orphans.drop_postgres is not None and conn.dialect.name == "postgresql":
        drop = orphans.drop_postgres
    dropped = int(conn.execute(drop, {"keys": list(keys), "seq": seq}).rowcount or 0)
    if dropped and orphans is _TOOL_SETS:  # writers forget the ids they cached
        write_meta_sync(conn, SWEPT_KEY, str(int(read_meta_sync(conn, SWEPT_KEY) or 0) + 1))
    return dropped


class _Candidates:
    """The unreferenced rows of one table, found by one scan into a temporary table.

    The table belongs to one connection, held (without a transaction: each statement
    commits alone, so SQLite's write lock is never taken) from the first page to the
    last. Any error on it closes it: the next :meth:`next_page` scans again on a new one.
    """

    def __init__(self, engine: AsyncEngine, orphans: _Orphans) -> None:
        self._engine = engine
        self._orphans = orphans
        self._table = f"{'pg_temp' if is_postgres(engine) else 'temp'}.{orphans.temp}"
        self._held: contextlib.AsyncExitStack | None = None
        self._conn: AsyncConnection | None = None
        self._seq: int | None = None
        self._rescan_after = RESCAN_AFTER

    async def __aenter__(self) -> _Candidates:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._close()

    async def next_page(self, after: Any, page: int) -> tuple[int | None, list[Any]]:
        """The change counter read before the scan, and the next ``page`` candidates after ``after``."""
        try:
            if self._conn is None or await self._stale(self._conn):
                await self._scan(after)
            assert self._conn is not None
            keys = await self._conn.execute(
                text(f"SELECT key FROM {self._table} WHERE key > :after ORDER BY key LIMIT :n"),
                {"after": after, "n": page},
            )
            return self._seq, list(keys.scalars())
        except BaseException:
            await self._close()
            raise

    async def _stale(self, conn: AsyncConnection) -> bool:
        if self._seq is None:
            return False
        return int((await conn.execute(_COUNTER)).scalar() or 0) - self._seq > self._rescan_after

    async def _scan(self, after: Any) -> None:
        if self._conn is None:
            self._held = contextlib.AsyncExitStack()
            self._conn = await self._held.enter_async_context(statement_at_a_time(self._engine))
        conn, table = self._conn, self._table
        await conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
        self._seq = (await conn.execute(_COUNTER)).scalar()  # before the scan: see the module docstring
        columns = self._orphans.columns[self._engine.dialect.name]
        await conn.execute(text(f"CREATE TEMPORARY TABLE {self._orphans.temp} {columns}"))
        await conn.execute(text(f"INSERT INTO {table} (key) {self._orphans.find}"), {"after": after})
        if is_postgres(self._engine):  # autovacuum never analyzes a temporary table
            await conn.execute(text(f"ANALYZE {table}"))
        if self._seq is not None:  # writers busy during the scan: rescan less often
            during = int((await conn.execute(_COUNTER)).scalar() or 0) - self._seq
            self._rescan_after = max(RESCAN_AFTER, 2 * during)

    async def _close(self) -> None:
        """Drop the temporary table and give the connection back (a lost one is discarded)."""
        conn, held = self._conn, self._held
        self._conn = self._held = None
        if conn is None or held is None:
            return
        with contextlib.suppress(Exception):  # a lost connection: the error that lost it is raised
            await conn.rollback()
            await conn.execute(text(f"DROP TABLE IF EXISTS {self._table}"))
        with contextlib.suppress(Exception):
            await held.aclose()
