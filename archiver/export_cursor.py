"""An export's cursor: where it stands, moving it, and adopting a published batch.

A cursor (a row of ``export_cursors``) remembers the highest ``change_seq`` exported and
the number of its last batch. It moves only after the batch's manifest is in place, in
one transaction that fails when another export with the same cursor moved it meanwhile
(:class:`CursorMoved`). A batch whose manifest was published but whose cursor commit was
lost is adopted by the next run (see :func:`adopt_published_batch`).
"""

from __future__ import annotations

import asyncio
import csv
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from archiver.export_check import batch_holds_range
from archiver.export_files import remove_unfinished
from archiver.export_schema import BATCHES_DIR, ExportError
from archiver.logs import get_logger
from archiver.schema import archive_changes, export_cursors, responses
from archiver.transactions import read_snapshot

log = get_logger()

BEFORE_ALL = -(2**63)
"""Lower bound of a full export: every row, even one inserted without a change_seq (0)."""


class CursorMoved(ExportError):
    """Another export with the same cursor committed while this one exported."""


@dataclass(frozen=True)
class Position:
    """Where a cursor stands (``last_seq``, ``batch``) and how far the archive reaches
    (``to_seq``: the highest committed ``change_seq`` when the export starts)."""

    last_seq: int
    batch: int
    to_seq: int


async def read_position(engine: AsyncEngine, cursor: str) -> Position:
    """The cursor's position (batch 0 at change_seq 0 for a new cursor) and the archive's reach."""
    async with read_snapshot(engine) as conn:
        row = (
            await conn.execute(
                select(export_cursors.c.last_seq, export_cursors.c.batch).where(
                    export_cursors.c.name == cursor
                )
            )
        ).first()
        # Every row at or below the committed counter is committed (the writer holds the
        # counter's row lock until it commits).
        to_seq = (
            await conn.execute(select(archive_changes.c.seq).where(archive_changes.c.name == "archive"))
        ).scalar()
        if to_seq is None:
            to_seq = (
                await conn.execute(
                    select(responses.c.change_seq).order_by(responses.c.change_seq.desc()).limit(1)
                )
            ).scalar()
    last_seq, batch = (int(row[0]), int(row[1])) if row is not None else (0, 0)
    return Position(last_seq, batch, int(to_seq or 0))


async def commit_cursor(
    engine: AsyncEngine, cursor: str, batch: int, to_seq: int, exported_at: datetime
) -> None:
    """Move the cursor to ``to_seq`` and ``batch``, if it is still at ``batch - 1``.

    Raises:
        ExportError: another export with the same cursor committed in the meantime.
    """
    moved_by_other = CursorMoved(
        f"cursor {cursor!r} moved while exporting (expected it at batch {batch - 1}): another "
        "export with the same cursor ran at the same time; run the export again"
    )
    async with engine.begin() as conn:
        moved = await conn.execute(
            update(export_cursors)
            .where(export_cursors.c.name == cursor, export_cursors.c.batch == batch - 1)
            .values(last_seq=to_seq, batch=batch, exported_at=exported_at)
        )
        if moved.rowcount == 1:
            return
        if batch != 1:
            raise moved_by_other
        try:
            await conn.execute(
                insert(export_cursors).values(
                    name=cursor, last_seq=to_seq, batch=batch, exported_at=exported_at
                )
            )
        except IntegrityError:  # the row exists: someone else's batch 1 (or later)
            raise moved_by_other from None


async def adopt_published_batch(
    engine: AsyncEngine, out_dir: Path, cursor: str, position: Position
) -> Position:
    """The cursor moved past the batch an earlier run published in ``out_dir`` but did not commit.

    An export publishes its manifest, then moves the cursor. Killed in between (or its
    commit failed), the manifest of the cursor's next batch is in ``out_dir``: a loader may
    have read it already, so that batch is final. Writing it again under the same names
    with the rows archived since would hide those rows from every loader that loads a
    manifest once, so the cursor is moved to the manifest's ``to_seq`` instead, and the
    export goes on with the batch after it.

    A manifest that does not fit the cursor (another ``from_seq``, a ``to_seq`` the
    database does not reach, a file of it missing), whose last response (``last``) the
    database does not hold at that ``change_seq`` or a later one, whose ``responses`` file
    lacks a response the archive numbers inside the batch's range (a feed written before
    the archive was restored from a backup, whose ``change_seq`` numbers the restored
    archive then gave to other rows: see :mod:`archiver.export_check`), or that cannot be
    read as a manifest at all, is refused: the batch is published, a loader that reads each
    manifest once may have loaded it, and writing it again under the same names would
    change it under that loader.

    Raises:
        PublishedBatchConflict: the next batch's manifest is there and cannot be adopted.
    """
    batch = position.batch + 1
    path = out_dir / BATCHES_DIR / f"{cursor}-{batch:08d}.json"
    try:
        manifest = orjson.loads(path.read_bytes())
        to_seq = int(manifest["to_seq"])
        fits = (
            manifest["cursor"] == cursor
            and manifest["batch"] == batch
            and (manifest["full"] is True or int(manifest["from_seq"]) == position.last_seq)
            and position.last_seq <= to_seq <= position.to_seq
            and all((out_dir / name).is_file() for name in manifest["files"])
        )
        exported_at = datetime.fromisoformat(manifest["exported_at"])
        last_seq, last_id = int(manifest["last"]["change_seq"]), str(manifest["last"]["id"])
    except FileNotFoundError:
        await asyncio.to_thread(remove_unfinished, out_dir, cursor, batch)
        return position
    except (OSError, ValueError, TypeError, KeyError) as exc:  # damaged, or not ours: still published
        raise published_conflict(
            out_dir, cursor, batch, f"cannot be read as one of its manifests ({exc!r})"
        ) from None
    if fits:
        async with read_snapshot(engine) as conn:
            held = (
                await conn.execute(select(responses.c.change_seq).where(responses.c.id == last_id))
            ).scalar()
        # The same row, or re-archived since (a change_seq above the batch's): ours.
        fits = held is not None and (held == last_seq or held > to_seq)
    if fits:
        # And every row the archive numbers inside the batch's range is in it (not so
        # after a restore from a backup, even with ``last`` re-archived since).
        fits = await _holds_archive_range(engine, out_dir, manifest, position.last_seq, to_seq)
    if not fits:
        raise published_conflict(out_dir, cursor, batch, "does not match this archive")
    await commit_cursor(engine, cursor, batch, to_seq, exported_at)
    log.warning("archiver.export_batch_adopted", cursor=cursor, batch=batch, to_seq=to_seq)
    return Position(to_seq, batch, position.to_seq)


class PublishedBatchConflict(ExportError):
    """The next batch's manifest is published but cannot be adopted: it is never rewritten."""


def published_conflict(out_dir: Path, cursor: str, batch: int, why: str) -> PublishedBatchConflict:
    """The one-line refusal to write a batch whose manifest is already published."""
    why = " ".join(why.split())[:300]
    return PublishedBatchConflict(
        f"batch {batch} of cursor {cursor!r} is already published in {out_dir} "
        f"({BATCHES_DIR}/{cursor}-{batch:08d}.json) but {why}, and a published batch is never "
        "written again (a loader may have loaded it): was the archive restored from a backup? "
        "Export with --full into a new directory for a feed of this archive, or remove the "
        f"batches from {batch} on from this directory if no loader has read them"
    )


async def _holds_archive_range(
    engine: AsyncEngine, out_dir: Path, manifest: dict[str, Any], last_seq: int, to_seq: int
) -> bool:
    """Whether the manifest's ``responses`` file holds every response the archive has in
    the batch's range (any fault reading it: no, and the batch is written again)."""
    from_seq = BEFORE_ALL if manifest["full"] is True else last_seq
    try:
        (name,) = [n for n in manifest["files"] if str(n).startswith(f"{responses.name}/")]
        return await batch_holds_range(engine, out_dir / name, str(manifest["format"]), from_seq, to_seq)
    except (OSError, ValueError, KeyError, IndexError, TypeError, ImportError, csv.Error) as exc:
        log.warning("archiver.export_manifest_unreadable", file=str(exc))
        return False
