"""Export the archive to files a warehouse loads: JSON lines, Parquet or CSV, incrementally.

Every export writes one *batch*: one file per archive table (``responses``, every
table in :data:`archiver.schema.CHILD_TABLES`, and the ``input_items`` view, so a
warehouse gets each response's input items as rows whatever their storage), named after
the cursor and the batch number, plus a manifest::

    OUT/responses/default-00000001.parquet
    OUT/output_items/default-00000001.parquet
    ...                                         (one file per table, possibly with no rows)
    OUT/_batches/default-00000001.json          (what the batch holds)
    OUT/_schema.json                            (every table's columns and types)

A cursor (a row of ``export_cursors``) remembers the highest ``change_seq`` exported. A
batch holds the responses whose ``change_seq`` is above it and at most the ``to_seq`` read
when the export starts, with all their child rows; ``change_seq`` is assigned in commit
order (see docs/schema.md, "Change tracking"), so nothing is skipped.

Crash safety: each file is written under a temporary name in its directory, fsynced and
renamed into place, then the manifest; only then is the cursor moved, in one transaction.
An export that dies before its manifest is in place leaves the cursor where it was, and the
next run writes the *same* file names again (same batch number), so a loader that replaces
files by name never sees a duplicate. Once the manifest is in place the batch is published
and never changes: a run that finds the manifest of the cursor's next batch in the
directory (the commit after it was lost) moves the cursor past it and goes on. The
temporary files of a run stopped midway are removed by the next export into the directory.

Memory: responses are read in chunks of ``chunk_size`` (keyset pagination on
``(change_seq, id)``; a chunk also ends once it holds :data:`CHUNK_BYTES` of raw bodies),
each chunk with its child rows in one short read transaction. A chunk is written (Parquet:
one row group) in a thread while the next one is read, so at most two are in memory.

The parts live in their own modules: :mod:`archiver.export_schema` (formats, columns,
``_schema.json``), :mod:`archiver.export_read` (the chunks read from the archive),
:mod:`archiver.export_writers` (the batch's files per format), :mod:`archiver.export_files`
(atomic writes, the manifest, clean-up) and :mod:`archiver.export_cursor` (the cursor and
the adoption of a published batch). This module runs one export.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine

from archiver import __version__
from archiver.export_cursor import (
    BEFORE_ALL,
    CursorMoved,
    adopt_published_batch,
    commit_cursor,
    read_position,
)
from archiver.export_files import remove_leftovers, unpublish, write_manifest
from archiver.export_read import CHUNK_BYTES, read_chunk
from archiver.export_schema import (
    BATCHES_DIR,
    FORMATS,
    SCHEMA_FILE,
    ExportError,
    ExportFormat,
    column_kind,
    export_tables,
    iso_utc,
    raw_as_text,
    schema_document,
)
from archiver.export_writers import Batch, arrow_schema, import_arrow
from archiver.logs import get_logger
from archiver.schema import responses

# The names defined in the export_* modules are re-exported: callers import them from here.
__all__ = [
    "CHUNK_BYTES",
    "FORMATS",
    "CursorMoved",
    "ExportError",
    "ExportFormat",
    "ExportReport",
    "arrow_schema",
    "column_kind",
    "export",
    "export_tables",
    "raw_as_text",
    "schema_document",
]

log = get_logger()

_CURSOR_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class ExportReport:
    """What one export did.

    ``from_seq`` is exclusive and ``to_seq`` inclusive: the batch holds the responses with
    ``from_seq < change_seq <= to_seq``. ``rows`` counts rows per table, ``responses``
    included. ``files`` are the paths written, relative to the output directory (data
    files, then the manifest and ``_schema.json``); empty when there was nothing new, in
    which case ``batch`` is the cursor's last batch, unchanged.
    """

    cursor: str
    batch: int
    from_seq: int
    to_seq: int
    responses: int
    rows: dict[str, int]
    files: list[str]
    full: bool


# --- export -------------------------------------------------------------------------------


@contextlib.contextmanager
def _directory_lock(out_dir: Path) -> Iterator[None]:
    """One export at a time per output directory (an flock on the directory itself)."""
    fd = os.open(out_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ExportError(f"another export is writing into {out_dir}") from None
        yield
    finally:
        os.close(fd)  # releases the lock


def cursor_name_problem(cursor: str) -> str | None:
    """None when ``cursor`` can name an export position, else what it must be."""
    if _CURSOR_NAME.match(cursor):
        return None
    return "must be 1 to 128 letters, digits, '_', '-' or '.', starting with a letter or digit"


def _check_arguments(fmt: str, cursor: str, chunk_size: int) -> None:
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
    problem = cursor_name_problem(cursor)
    if problem:
        raise ExportError(f"invalid cursor name {cursor!r}: {problem}")
    if chunk_size < 1:
        raise ExportError("chunk size must be at least 1")


async def export(
    engine: AsyncEngine,
    out_dir: Path,
    *,
    fmt: ExportFormat = "jsonl",
    cursor: str = "default",
    full: bool = False,
    chunk_size: int = 5000,
) -> ExportReport:
    """Export what changed since the cursor's last export (or everything) as one batch.

    Args:
        engine: an open archive database (see :func:`archiver.db.open_database`).
        out_dir: the output directory (created if missing).
        fmt: ``jsonl``, ``parquet`` (needs pyarrow) or ``csv``.
        cursor: the name of the export position in ``export_cursors``; file names start
            with it, so several consumers can export into one directory.
        full: export every response up to now, whatever the cursor says; the cursor then
            moves to now.
        chunk_size: responses read and written at a time (one Parquet row group).

    Returns:
        What was written. Nothing is written when nothing changed since the cursor.

    Raises:
        ExportError: bad arguments, another export writes into ``out_dir``, the cursor is
            ahead of the database (restored from a backup?), or it moved meanwhile.
    """
    _check_arguments(fmt, cursor, chunk_size)
    if fmt == "parquet":
        import_arrow()
    started = time.monotonic()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _directory_lock(out_dir):
        await asyncio.to_thread(remove_leftovers, out_dir)
        position = await adopt_published_batch(engine, out_dir, cursor, await read_position(engine, cursor))
        if not full and position.last_seq > position.to_seq:
            raise ExportError(
                f"cursor {cursor!r} is at change_seq {position.last_seq}, but the database only "
                f"reaches {position.to_seq}: was it restored from a backup? Export with --full "
                "or use a new --cursor"
            )
        from_seq = 0 if full else position.last_seq
        batch_no = position.batch + 1
        counts = {str(table.name): 0 for table in export_tables()}
        batch: Batch | None = None
        writing: asyncio.Future[None] | None = None
        try:
            after: tuple[int, str | None] = (BEFORE_ALL if full else from_seq, None)
            more = True
            while more:
                more = False
                async with contextlib.aclosing(
                    read_chunk(engine, after, position.to_seq, chunk_size)
                ) as pieces:
                    async for piece in pieces:
                        if batch is None:
                            batch = await asyncio.to_thread(Batch.open, out_dir, fmt, cursor, batch_no)
                        # A piece is written in a thread while the next one is read.
                        if writing is not None:
                            await writing
                        writing = asyncio.ensure_future(asyncio.to_thread(batch.write, piece))
                        for name, rows in piece.rows.items():
                            counts[name] += len(rows)
                        after, more = piece.last_key, piece.more
            if writing is not None:
                await writing
                writing = None
            if batch is None:
                log.info(
                    "archiver.export_done",
                    cursor=cursor,
                    batch=position.batch,
                    from_seq=from_seq,
                    to_seq=position.to_seq,
                    responses=0,
                    nothing_new=True,
                )
                return ExportReport(cursor, position.batch, from_seq, position.to_seq, 0, counts, [], full)
            paths = await asyncio.to_thread(batch.publish)
        except BaseException:
            if writing is not None:
                # A thread cannot be cancelled: let it finish before its files are removed.
                with contextlib.suppress(BaseException):
                    await asyncio.shield(writing)
            if batch is not None:
                await asyncio.shield(asyncio.to_thread(batch.discard))
            raise
        exported_at = datetime.now(UTC)
        files = [p.relative_to(out_dir).as_posix() for p in paths]
        manifest_path = Path(BATCHES_DIR) / f"{cursor}-{batch_no:08d}.json"
        manifest = {
            "cursor": cursor,
            "batch": batch_no,
            "full": full,
            "format": fmt,
            "from_seq": from_seq,
            "to_seq": position.to_seq,
            "last": {"change_seq": after[0], "id": after[1]},
            "responses": counts[responses.name],
            "rows": counts,
            "files": files,
            "exported_at": iso_utc(exported_at),
            "generated_by": f"archiver {__version__}",
        }
        schema = orjson.dumps(schema_document(), option=orjson.OPT_INDENT_2) + b"\n"
        manifest_bytes = orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n"
        # Shielded: the thread finishes (or removes the batch) whatever happens to this task.
        await asyncio.shield(
            asyncio.to_thread(write_manifest, out_dir, paths, out_dir / manifest_path, manifest_bytes, schema)
        )
        # Last: a crash before this line makes the next run write the same batch again.
        try:
            await commit_cursor(engine, cursor, batch_no, position.to_seq, exported_at)
        except CursorMoved:
            # The cursor counts these rows as delivered by the other export: a batch left
            # here would be loaded beside a cursor that never moved through it.
            await asyncio.to_thread(unpublish, [*paths, out_dir / manifest_path])
            raise
    report = ExportReport(
        cursor=cursor,
        batch=batch_no,
        from_seq=from_seq,
        to_seq=position.to_seq,
        responses=counts[responses.name],
        rows=counts,
        files=[*files, manifest_path.as_posix(), SCHEMA_FILE],
        full=full,
    )
    log.info(
        "archiver.export_done",
        cursor=cursor,
        batch=batch_no,
        format=fmt,
        full=full,
        from_seq=from_seq,
        to_seq=position.to_seq,
        responses=report.responses,
        rows=sum(counts.values()),
        duration_s=round(time.monotonic() - started, 3),
    )
    return report
