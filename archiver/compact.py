"""``archiver compact``: bring an existing archive to the current storage, online, and give space back.

1. If the archive has no dictionary yet and holds enough bodies (the first-training rule
   of :mod:`archiver.codec`, counting the bodies already archived), train one.
2. Re-encode every body stored as received (``raw_codec`` NULL, as rows written before
   migration 0008 are, or ``identity``) and every plain ``zstd`` body once a dictionary
   exists, and rebuild those responses' normalized rows, in the batches of
   :mod:`archiver.rebuild` (short transactions beside a running daemon, fenced against it).
   What is left to do is derivable from the data (``raw_codec``), so a crash needs no saved
   position: run it again and it continues with what is not converted yet.
3. Delete the tool sets and stored input items no response references any more (a
   response archived again with other tools or input items leaves them; writers never
   delete them), beside running writers: :mod:`archiver.orphans`.
4. Give the freed space back. SQLite: ``PRAGMA incremental_vacuum`` in small steps when
   the file uses ``auto_vacuum = INCREMENTAL`` (new archives do); an older file says so,
   and ``--vacuum`` rewrites it once (``VACUUM``, which needs the daemon stopped) and
   switches it to incremental. PostgreSQL: plain ``VACUUM (ANALYZE)`` of the archive
   tables, which makes the dead rows' space reusable without blocking anyone;
   ``--vacuum`` runs ``VACUUM FULL``, which returns it to the operating system but locks
   each table while it rewrites it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from sqlalchemy import ColumnElement, Select, func, or_, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from archiver import codec
from archiver.codec import IDENTITY, ZSTD, Codec
from archiver.db import now_sql
from archiver.db_retry import with_db_retry
from archiver.dburl import sqlite_path
from archiver.deadline import StopDeadline
from archiver.dictionaries import WritingCodec, load_dictionaries
from archiver.errors import ArchiverError
from archiver.logs import get_logger
from archiver.orphans import OrphanCounts, sweep_orphans
from archiver.rebuild import Rebuilder, RebuildReport, StopFlag, retried
from archiver.schema import CHILD_TABLES, archive_dictionaries, responses
from archiver.transactions import statement_at_a_time
from archiver.workers import DEFAULT_MAX_AGE_S

log = get_logger()

REWALKS = 3
"""Walks again over the responses another process rewrote while compact read them (at most)."""
VACUUM_STEP_PAGES = 2048
"""Pages one ``PRAGMA incremental_vacuum`` step frees (8 MiB at 4 KiB pages): a short write lock."""


class DaemonRunning(ArchiverError):
    """A full VACUUM needs the archive to itself."""


class VacuumNotAllowed(ArchiverError):
    """The database user may not VACUUM FULL the archive tables."""


@dataclass(slots=True)
class CompactResult:
    """What ``compact`` did."""

    report: RebuildReport
    dictionary_trained: int | None = None
    dictionary: int | None = None
    """The dictionary bodies were re-encoded with (None: plain zstd)."""
    left_plain: int = 0
    """Bodies left as plain zstd because there is no dictionary yet."""
    orphans: OrphanCounts = field(default_factory=OrphanCounts)
    """Tool sets and input items removed because no response references them any more."""
    space: str = ""
    """What was done to give space back, one line."""
    file_bytes_before: int | None = None
    file_bytes_after: int | None = None

    def lines(self) -> tuple[list[str], str]:
        """(notes for stderr, the summary line for stdout)."""
        notes = []
        if self.dictionary_trained is not None:
            notes.append(f"archiver: trained dictionary {self.dictionary_trained} on the archive's bodies")
        if self.left_plain:
            notes.append(
                f"archiver: {self.left_plain:,} bodies stay plain zstd until the archive holds "
                f"{codec.FIRST_TRAINING_AT:,} bodies and has a dictionary; compact again then"
            )
        notes += self.report.failure_notes("compacted")
        notes.append(f"archiver: {self.space}")
        line = self.report.summary_line("compacted")
        if self.report.stored_before:
            line += f"; raw {self.report.stored_before:,} -> {self.report.stored_after:,} bytes"
        line += (
            f"; orphans removed: {self.orphans.tool_sets:,} tool sets, "
            f"{self.orphans.input_items:,} input items"
        )
        if self.file_bytes_before is not None and self.file_bytes_after is not None:
            line += f"; file {self.file_bytes_before:,} -> {self.file_bytes_after:,} bytes"
        return notes, line

    def as_dict(self) -> dict[str, Any]:
        """The result for JSON output."""
        return {
            **self.report.as_dict(),
            "dictionary_trained": self.dictionary_trained,
            "dictionary": self.dictionary,
            "left_plain": self.left_plain,
            "orphans_removed": self.orphans.as_dict(),
            "space": self.space,
            "file_bytes_before": self.file_bytes_before,
            "file_bytes_after": self.file_bytes_after,
        }


async def compact(
    engine: AsyncEngine,
    *,
    batch_size: int = 200,
    max_batch_bytes: int = 4 << 20,
    vacuum: bool = False,
    on_start: Callable[[int], None] | None = None,
    on_batch: Callable[[RebuildReport], None] | None = None,
    stop: StopFlag | None = None,
) -> CompactResult:
    """Re-encode old bodies, rebuild their rows, give the space back (see the module docstring).

    Raises:
        DaemonRunning: ``vacuum`` while a worker reports itself alive.
    """
    if vacuum:
        await _refuse_beside_a_daemon(engine)
        if engine.dialect.name == "postgresql":
            await _refuse_without_vacuum_rights(engine)
    path = sqlite_path(engine.url)
    result = CompactResult(RebuildReport())
    result.file_bytes_before = _file_bytes(path)
    deadline = None if stop is None else stop.deadline
    result.dictionary_trained = await _train_first_dictionary(engine, deadline)
    encoder = Codec(await retried(partial(_dictionaries, engine), stop))
    result.dictionary = encoder.current
    old = [IDENTITY] if encoder.current is None else [IDENTITY, ZSTD]
    where = or_(responses.c.raw_codec.is_(None), responses.c.raw_codec.in_(old))
    total = await retried(
        partial(_count, engine, select(func.count()).select_from(responses).where(where)), stop
    )
    result.report.total = total
    if on_start is not None:
        on_start(total)

    def walker(report: RebuildReport, progress: Callable[[RebuildReport], None] | None) -> Rebuilder:
        return Rebuilder(
            engine,
            batch_size=batch_size,
            max_batch_bytes=max_batch_bytes,
            encoder=encoder,
            on_batch=progress,
            report=report,
            stop=stop,
        )

    await walker(result.report, on_batch).walk(where)
    # A response another process rewrote between compact's read and its write was skipped.
    # The daemon's re-archive wrote it in the new encoding, but a renormalize (or a mode
    # switch) kept its old raw: walk what is still in an old encoding again.
    left: ColumnElement[bool] = responses.c.raw_codec.is_(None)
    if encoder.current is not None:
        left = or_(left, responses.c.raw_codec == ZSTD)
    for _ in range(REWALKS):
        if result.report.stopped or not result.report.skipped:
            break
        again = await walker(RebuildReport(), None).walk(left)
        result.report.absorb_rewalk(again)
        if not again.rewritten:
            break
    if result.report.stopped:
        result.space = f"stopped by {result.report.stopped}: run compact again to finish"
        return result
    # What follows the walk is retried like its batches: a restart now ends no finished work.
    if encoder.current is None:
        plain = select(func.count()).select_from(responses).where(responses.c.raw_codec == ZSTD)
        result.left_plain = await retried(partial(_count, engine, plain), stop)
    result.orphans = await sweep_orphans(engine, deadline=deadline)
    vacuum_step = _vacuum_postgres if engine.dialect.name == "postgresql" else _vacuum_sqlite
    result.space = await retried(partial(vacuum_step, engine, full=vacuum), stop)
    result.file_bytes_after = _file_bytes(path)
    return result


async def _dictionaries(engine: AsyncEngine) -> dict[int, bytes]:
    async with statement_at_a_time(engine) as conn:
        return await load_dictionaries(conn)


async def _count(engine: AsyncEngine, query: Select[Any]) -> int:
    async with statement_at_a_time(engine) as conn:
        return int((await conn.execute(query)).scalar() or 0)


def _file_bytes(path: str | None) -> int | None:
    if path is None:
        return None
    try:
        return sum(os.path.getsize(p) for p in (path, f"{path}-wal") if os.path.exists(p))
    except OSError:
        return None


async def _train_first_dictionary(engine: AsyncEngine, deadline: StopDeadline | None) -> int | None:
    """Train the archive's first dictionary if it has none and holds enough bodies; its id."""
    async with statement_at_a_time(engine) as conn:
        if (await conn.execute(select(archive_dictionaries.c.id).limit(1))).first() is not None:
            return None
        archived = int((await conn.execute(select(func.count()).select_from(responses))).scalar() or 0)
    if archived < codec.FIRST_TRAINING_AT:
        return None
    writing_codec = WritingCodec()

    async def train() -> int | None:
        async with engine.begin() as conn:
            return await conn.run_sync(
                lambda c: writing_codec.train_dictionary_sync(c, bodies_written=archived)
            )

    return await with_db_retry(train, deadline=deadline)


async def _refuse_beside_a_daemon(engine: AsyncEngine) -> None:
    now = now_sql(engine.dialect.name)
    async with statement_at_a_time(engine) as conn:
        owners = (
            (
                await conn.execute(
                    text(
                        f"SELECT owner FROM archive_workers WHERE updated_at >= {now} - :age ORDER BY owner"
                    ),
                    {"age": DEFAULT_MAX_AGE_S},
                )
            )
            .scalars()
            .all()
        )
    if owners:
        raise DaemonRunning(
            f"--vacuum needs the archive to itself, and a worker reported itself running within "
            f"{DEFAULT_MAX_AGE_S:.0f} s ({', '.join(owners[:3])}): stop `archiver run` first, or run "
            "compact without --vacuum (it works beside the daemon)"
        )


async def _vacuum_sqlite(engine: AsyncEngine, *, full: bool) -> str:
    async with statement_at_a_time(engine) as conn:

        async def pragma(sql: str) -> int:
            return int((await conn.exec_driver_sql(sql)).scalar() or 0)

        page_size = await pragma("PRAGMA page_size")
        if full:
            await conn.exec_driver_sql("PRAGMA auto_vacuum = INCREMENTAL")
            await conn.exec_driver_sql("VACUUM")
            await conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            return "VACUUM: the file was rewritten; auto_vacuum is now INCREMENTAL"
        free = await pragma("PRAGMA freelist_count")
        if await pragma("PRAGMA auto_vacuum") != 2:
            return (
                f"{free * page_size:,} bytes are free inside the file, which uses no incremental "
                "auto-vacuum (it was created before archiver set it): run `archiver compact --vacuum` "
                "once with the daemon stopped to give them back and switch it"
            )
        freed = 0
        while free > 0:
            await conn.exec_driver_sql(f"PRAGMA incremental_vacuum({VACUUM_STEP_PAGES})")
            left = await pragma("PRAGMA freelist_count")
            if left >= free:  # another writer reuses pages as fast: stop here
                break
            freed += free - left
            free = left
        await conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    return f"incremental vacuum: {freed * page_size:,} bytes given back"


_VACUUM_TABLES = tuple(t.name for t in (responses, *CHILD_TABLES))

# Who may VACUUM a table: its owner, the database's owner or a superuser (and, from
# PostgreSQL 17, a role with the MAINTAIN privilege). For any other role the server skips
# the table with a warning and the statement succeeds, so compact asks first.
_NOT_VACUUMABLE = """
SELECT c.relname FROM pg_class AS c
WHERE c.relnamespace = current_schema()::regnamespace AND c.relname = ANY(:tables)
AND NOT pg_has_role(current_user, c.relowner, 'USAGE')
AND NOT pg_has_role(
    current_user, (SELECT datdba FROM pg_database WHERE datname = current_database()), 'USAGE'
)
AND NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
{maintain}
ORDER BY c.relname
"""


async def _tables_not_vacuumable(engine: AsyncEngine) -> tuple[str, list[str]]:
    """(the database user, the archive tables it may not VACUUM)."""
    async with statement_at_a_time(engine) as conn:
        user, version = (
            await conn.execute(text("SELECT current_user, current_setting('server_version_num')"))
        ).one()
        maintain = "AND NOT has_table_privilege(c.oid, 'MAINTAIN')" if int(version) >= 170000 else ""
        rows = await conn.execute(
            text(_NOT_VACUUMABLE.format(maintain=maintain)), {"tables": list(_VACUUM_TABLES)}
        )
        return str(user), [str(name) for name in rows.scalars()]


def _named(tables: list[str]) -> str:
    return ", ".join(tables[:3]) + (f" and {len(tables) - 3} more" if len(tables) > 3 else "")


async def _refuse_without_vacuum_rights(engine: AsyncEngine) -> None:
    user, refused = await _tables_not_vacuumable(engine)
    if refused:
        raise VacuumNotAllowed(
            f"--vacuum (VACUUM FULL) needs the owner of the archive tables, and the database user "
            f"{user} does not own {_named(refused)}: run `archiver compact --vacuum` as their owner "
            "(or a superuser), or compact without --vacuum"
        )


async def _vacuum_postgres(engine: AsyncEngine, *, full: bool) -> str:
    user, refused = await _tables_not_vacuumable(engine)
    tables = [name for name in _VACUUM_TABLES if name not in refused]
    if tables:
        async with statement_at_a_time(engine) as conn:  # autocommit: VACUUM cannot run in a transaction
            await conn.exec_driver_sql(f"VACUUM ({'FULL, ' if full else ''}ANALYZE) {', '.join(tables)}")
    if refused:
        return (
            f"VACUUM (ANALYZE) left out {len(refused)} of {len(_VACUUM_TABLES)} archive tables, which the "
            f"database user {user} does not own ({_named(refused)}): autovacuum makes their free space "
            "reusable; to do it now, run compact as their owner"
        )
    if full:
        return "VACUUM FULL: the archive tables were rewritten and their space given back"
    return (
        "VACUUM (ANALYZE): the space of the rewritten rows is free for new rows; to give it "
        "back to the operating system, run `archiver compact --vacuum` with the daemon stopped "
        "(VACUUM FULL) or pg_repack online"
    )
