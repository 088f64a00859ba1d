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
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import csv
import fcntl
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal, get_args

import orjson
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    and_,
    any_,
    bindparam,
    func,
    insert,
    or_,
    select,
    type_coerce,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql import Select

from archiver import __version__
from archiver.codec import Codec
from archiver.db import read_snapshot
from archiver.errors import ArchiverError
from archiver.export_check import batch_holds_range
from archiver.jsontext import json_text
from archiver.logs import get_logger
from archiver.schema import (
    CHILD_TABLES,
    JSONDoc,
    archive_changes,
    export_cursors,
    input_item_lists,
    input_items,
    is_json_type,
    responses,
    tool_sets,
)
from archiver.store import load_dictionaries

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

ExportFormat = Literal["jsonl", "parquet", "csv"]
FORMATS: tuple[str, ...] = get_args(ExportFormat)

SCHEMA_FILE = "_schema.json"
BATCHES_DIR = "_batches"
RAW_ENCODING = "raw_encoding"
"""Column written after ``raw`` in JSONL and CSV: ``utf-8`` or ``base64``."""

CHUNK_BYTES = 8 * 1024 * 1024
"""A chunk also ends once its raw bodies add up to this many bytes (bounds memory)."""
STREAM_ROWS = 50
"""Responses fetched from the database cursor at a time."""
SCHEMA_VERSION = 1
_BEFORE_ALL = -(2**63)
"""Lower bound of a full export: every row, even one inserted without a change_seq (0)."""

_CURSOR_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

ColumnKind = Literal["string", "int32", "int64", "float64", "bool", "timestamp", "json", "binary"]


class ExportError(ArchiverError):
    """The export failed."""


class CursorMoved(ExportError):
    """Another export with the same cursor committed while this one exported."""


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


EXPORTED_CHILDREN: tuple[Table, ...] = (*CHILD_TABLES, input_items, input_item_lists)
"""Every child table, then the ``input_items`` view (the items of each response in order,
read through the view so a warehouse gets one row per item as before) and the lists' own
fields (``input_item_lists``)."""


def export_tables() -> tuple[Table, ...]:
    """The tables an export writes, in file order: ``responses``, then every child table."""
    return (responses, *EXPORTED_CHILDREN)


STORAGE_COLUMNS = frozenset({"raw_codec", "raw_dict_id"})
"""How ``raw`` is stored: read to decode it, never exported (``raw`` is exported decoded)."""


EXPORTED_TOOLS: Column[Any] = Column("tools", JSONDoc())
"""The ``tools`` of an exported ``responses`` row, in place of ``tool_set_id``: the value of
its ``tool_sets`` row, so exports carry each response's tools as before migration 0015."""


def exported_columns(table: Table) -> list[Column[Any]]:
    """The columns of ``table`` an export writes, in order."""
    if table is not responses:
        return list(table.columns)
    return [
        EXPORTED_TOOLS if c.name == "tool_set_id" else c
        for c in table.columns
        if c.name not in STORAGE_COLUMNS
    ]


# --- column types -------------------------------------------------------------------------


def column_kind(column: Any) -> ColumnKind:
    """The export type of a SQLAlchemy column (the ``type`` in ``_schema.json``)."""
    type_ = column.type
    if is_json_type(type_):
        return "json"
    if isinstance(type_, BigInteger):
        return "int64"
    if isinstance(type_, Integer):
        return "int32"
    if isinstance(type_, Float):
        return "float64"
    if isinstance(type_, Boolean):
        return "bool"
    if isinstance(type_, DateTime):
        return "timestamp"
    if isinstance(type_, LargeBinary):
        return "binary"
    if isinstance(type_, String):  # Text too
        return "string"
    raise TypeError(f"no export type for {column.table.name}.{column.name} ({type_!r})")


_TYPE_DOCS: dict[str, dict[str, str]] = {
    "string": {"parquet": "string", "jsonl": "string", "csv": "quoted string"},
    "int32": {"parquet": "int32", "jsonl": "integer", "csv": "integer"},
    "int64": {"parquet": "int64", "jsonl": "integer", "csv": "integer"},
    "float64": {"parquet": "double", "jsonl": "number", "csv": "number"},
    "bool": {"parquet": "bool", "jsonl": "true or false", "csv": "true or false"},
    "timestamp": {
        "parquet": "timestamp[us, tz=UTC]",
        "jsonl": "string, ISO 8601 in UTC ending in Z (2026-05-01T12:00:00.123456Z)",
        "csv": "quoted string, ISO 8601 in UTC ending in Z",
    },
    "json": {
        "parquet": "string holding compact JSON text",
        "jsonl": "string holding compact JSON text (not a nested value)",
        "csv": "quoted string holding compact JSON text",
    },
    "binary": {
        "parquet": "binary, the bytes exactly",
        "jsonl": "string: the bytes decoded as UTF-8, or base64 when raw_encoding is 'base64'",
        "csv": "quoted string: as in jsonl",
    },
}


def schema_document() -> dict[str, Any]:
    """The ``_schema.json`` document: layout, encodings, and every table's columns."""
    tables: dict[str, Any] = {}
    for table in export_tables():
        columns: list[dict[str, Any]] = []
        for column in exported_columns(table):
            columns.append(
                {"name": str(column.name), "type": column_kind(column), "nullable": column.nullable}
            )
            if column_kind(column) == "binary":
                columns.append(
                    {
                        "name": RAW_ENCODING,
                        "type": "string",
                        "nullable": False,
                        "formats": ["jsonl", "csv"],
                        "description": f"how {column.name} is written: 'utf-8' (the bytes are "
                        "valid UTF-8 without NUL and are written as text) or 'base64'",
                    }
                )
        tables[str(table.name)] = {
            "primary_key": [str(c.name) for c in table.primary_key.columns],
            "columns": columns,
        }
    return {
        "schema_version": SCHEMA_VERSION,
        "generated_by": f"archiver {__version__}",
        "layout": {
            "data": "{table}/{cursor}-{batch:08d}.{jsonl|parquet|csv}",
            "manifest": BATCHES_DIR + "/{cursor}-{batch:08d}.json",
        },
        "rows": (
            "A response that changed is exported again in a later batch with a higher "
            "change_seq. Per response, keep the responses row with the highest change_seq "
            "and the child rows with that same change_seq."
        ),
        "types": _TYPE_DOCS,
        "null": {
            "parquet": "null",
            "jsonl": "null",
            "csv": 'an empty unquoted field (strings are always quoted: "" is an empty string)',
        },
        "tables": tables,
    }


# --- encoders -----------------------------------------------------------------------------


def _iso_utc(value: datetime) -> str:
    """ISO 8601 in UTC with ``Z``. Naive values are UTC (SQLite returns them so)."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat() + "Z"


def raw_as_text(raw: bytes) -> tuple[str, str]:
    """``(text, encoding)`` for a binary value in JSONL and CSV.

    UTF-8 without NUL is written as text (``utf-8``); anything else as base64 (``base64``).
    """
    if b"\x00" not in raw:
        try:
            return raw.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            pass
    return base64.b64encode(raw).decode("ascii"), "base64"


def _csv_field(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return '"' + value.replace('"', '""') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


@dataclass(frozen=True)
class _Layout:
    """How one table's rows become file rows."""

    table: str
    names: tuple[str, ...]
    kinds: tuple[ColumnKind, ...]
    text_names: tuple[str, ...]
    """Column names in JSONL and CSV (``raw_encoding`` follows a binary column)."""
    timestamps: tuple[int, ...]
    binary: int | None

    @classmethod
    def of(cls, table: Table) -> _Layout:
        names = tuple(str(c.name) for c in exported_columns(table))  # quoted_name is a str subclass
        kinds = tuple(column_kind(c) for c in exported_columns(table))
        binaries = [i for i, kind in enumerate(kinds) if kind == "binary"]
        assert len(binaries) <= 1, "one binary column per table (responses.raw)"
        text_names = list(names)
        if binaries:
            text_names.insert(binaries[0] + 1, RAW_ENCODING)
        return cls(
            table=str(table.name),
            names=names,
            kinds=kinds,
            text_names=tuple(text_names),
            timestamps=tuple(i for i, kind in enumerate(kinds) if kind == "timestamp"),
            binary=binaries[0] if binaries else None,
        )

    def text_values(self, row: Sequence[Any]) -> Sequence[Any]:
        """One row for JSONL and CSV: timestamps ISO, bytes as text or base64 (JSON is text already)."""
        if not self.timestamps and self.binary is None:
            return row
        values = list(row)
        for i in self.timestamps:
            if values[i] is not None:
                values[i] = _iso_utc(values[i])
        if self.binary is not None:
            raw = values[self.binary]
            text_, encoding = (None, None) if raw is None else raw_as_text(bytes(raw))
            values[self.binary] = text_
            values.insert(self.binary + 1, encoding)
        return values


class _Sink:
    """One table's file of one batch, written under a temporary name until published."""

    def __init__(self, layout: _Layout, path: Path) -> None:
        self.layout = layout
        self.path = path
        self.temp = path.with_name(f".{path.name}.tmp")

    def write(self, rows: Sequence[Sequence[Any]]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _JsonlSink(_Sink):
    def __init__(self, layout: _Layout, path: Path) -> None:
        super().__init__(layout, path)
        self.file: IO[bytes] = open(self.temp, "wb", buffering=1 << 20)  # noqa: SIM115 - closed in close()

    def write(self, rows: Sequence[Sequence[Any]]) -> None:
        names = self.layout.text_names
        to_text = self.layout.text_values
        write = self.file.write
        # Row by row, not joined: a chunk of large bodies is not copied again as a whole.
        for row in rows:
            write(orjson.dumps(dict(zip(names, to_text(row), strict=True)), option=orjson.OPT_APPEND_NEWLINE))

    def close(self) -> None:
        self.file.close()


class _CsvSink(_Sink):
    """RFC 4180 CSV with a header; strings always quoted, so an empty unquoted field is NULL."""

    def __init__(self, layout: _Layout, path: Path) -> None:
        super().__init__(layout, path)
        self.file: IO[str] = open(  # noqa: SIM115 - closed in close()
            self.temp, "w", encoding="utf-8", newline="", buffering=1 << 20
        )
        self.file.write(",".join(layout.text_names) + "\n")

    def write(self, rows: Sequence[Sequence[Any]]) -> None:
        to_text = self.layout.text_values
        write = self.file.write
        for row in rows:  # row by row, as in JSONL
            write(",".join(map(_csv_field, to_text(row))) + "\n")

    def close(self) -> None:
        self.file.close()


def _arrow() -> tuple[Any, Any]:
    try:
        import pyarrow as pa  # type: ignore[import-untyped,unused-ignore]
        import pyarrow.parquet as pq  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        raise ExportError("Parquet export needs pyarrow: pip install 'archiver[parquet]'") from None
    return pa, pq


def arrow_schema(table: Table) -> Any:
    """The Parquet (Arrow) schema of a table's export file."""
    pa, _ = _arrow()
    types = {
        "string": pa.string(),
        "int32": pa.int32(),
        "int64": pa.int64(),
        "float64": pa.float64(),
        "bool": pa.bool_(),
        "timestamp": pa.timestamp("us", tz="UTC"),
        "json": pa.string(),
        "binary": pa.binary(),
    }
    return pa.schema(
        [pa.field(c.name, types[column_kind(c)], nullable=bool(c.nullable)) for c in exported_columns(table)]
    )


class _ParquetSink(_Sink):
    """One row group per chunk."""

    def __init__(self, layout: _Layout, path: Path, table: Table) -> None:
        super().__init__(layout, path)
        self.pa, pq = _arrow()
        self.schema = arrow_schema(table)
        self.writer = pq.ParquetWriter(str(self.temp), self.schema, compression="zstd")

    def write(self, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        arrays = []
        for values, kind, arrow_field in zip(
            zip(*rows, strict=True), self.layout.kinds, self.schema, strict=True
        ):
            if kind == "binary":
                values = tuple(None if v is None else bytes(v) for v in values)
            # Naive datetimes (SQLite) are taken as UTC by a tz-aware timestamp type.
            arrays.append(self.pa.array(values, type=arrow_field.type))
        self.writer.write_table(
            self.pa.Table.from_arrays(arrays, schema=self.schema), row_group_size=len(rows)
        )

    def close(self) -> None:
        self.writer.close()


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    """Write a file under a temporary name, fsync it, rename it into place, fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    try:
        with open(temp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink(missing_ok=True)
        raise
    _fsync_path(path.parent)


def _write_manifest(
    out_dir: Path, paths: list[Path], manifest_path: Path, manifest: bytes, schema: bytes
) -> None:
    """Write ``_schema.json``, then the manifest, which publishes the batch.

    When either cannot be written (a full disk, a read-only directory), the batch's data
    files, already in place, are removed again: data files without a manifest would be
    read by a loader that globs them, and the next run writes that batch again.
    """
    try:
        _write_atomic(out_dir / SCHEMA_FILE, schema)
        _write_atomic(manifest_path, manifest)
    except BaseException:
        _unpublish([*paths, manifest_path])
        raise


_LEFTOVER_DATA = re.compile(r"^\.[A-Za-z0-9][A-Za-z0-9_.-]*-\d{8}\.(?:jsonl|parquet|csv)\.tmp$")
"""The temporary name of a batch's data file, in its table's directory (see ``_Sink.temp``)."""
_LEFTOVER_MANIFEST = re.compile(r"^\.[A-Za-z0-9][A-Za-z0-9_.-]*-\d{8}\.json\.tmp$")
"""The temporary name of a manifest, in ``_batches``."""


def _remove_leftovers(out_dir: Path) -> None:
    """Remove the temporary files of earlier exports that were stopped midway.

    SIGTERM (systemd's timeout) or SIGKILL leaves a half-written batch as hidden ``.tmp``
    files; a run of the same cursor and format overwrote them, any other never did. Only
    called under the directory lock, so no other export is writing into ``out_dir``.
    """
    # Each directory holds only its own kind: a user's ``.sales-20261201.csv.tmp`` in
    # the top level is not ours.
    (out_dir / f".{SCHEMA_FILE}.tmp").unlink(missing_ok=True)
    kinds = [(out_dir / BATCHES_DIR, _LEFTOVER_MANIFEST)]
    kinds += [(out_dir / t.name, _LEFTOVER_DATA) for t in export_tables()]
    for directory, ours in kinds:
        for leftover in directory.glob(".*.tmp"):
            if ours.match(leftover.name):
                leftover.unlink(missing_ok=True)


def _remove_unfinished(out_dir: Path, cursor: str, batch: int) -> None:
    """Remove the data files of a batch that has no manifest, in any format.

    A kill between the renames of the data files and the manifest leaves them; the next
    run writes that batch again, but in another format it would leave them beside it.
    """
    name = f"{cursor}-{batch:08d}"
    for table in export_tables():
        for fmt in FORMATS:
            (out_dir / table.name / f"{name}.{fmt}").unlink(missing_ok=True)


def _unpublish(paths: list[Path]) -> None:
    """Remove the published files of a batch that must not stay published, manifest first."""
    # Each file on its own: one that cannot be removed (a read-only directory) keeps no other.
    for path in reversed(paths):
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
    for directory in {path.parent for path in paths}:
        with contextlib.suppress(OSError):
            _fsync_path(directory)


@dataclass
class _Batch:
    """The open files of one batch."""

    out_dir: Path
    sinks: list[_Sink] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    """Held by each thread that writes, publishes or discards: a chunk's write cannot be
    cancelled, and a discard that closed the Parquet writer under it crashed the process
    (Ctrl-C while the task awaited the write: exit -11)."""

    @classmethod
    def open(cls, out_dir: Path, fmt: str, cursor: str, batch: int) -> _Batch:
        opened = cls(out_dir)
        try:
            for table in export_tables():
                directory = out_dir / table.name
                directory.mkdir(exist_ok=True)
                path = directory / f"{cursor}-{batch:08d}.{fmt}"
                layout = _Layout.of(table)
                sink: _Sink
                if fmt == "parquet":
                    sink = _ParquetSink(layout, path, table)
                elif fmt == "csv":
                    sink = _CsvSink(layout, path)
                else:
                    sink = _JsonlSink(layout, path)
                opened.sinks.append(sink)
        except BaseException:
            opened.discard()
            raise
        return opened

    def write(self, chunk: _Chunk) -> None:
        with self.lock:
            for sink in self.sinks:
                sink.write(chunk.rows.get(sink.layout.table, ()))

    def publish(self) -> list[Path]:
        """Close, fsync, and rename every file into place; returns the final paths."""
        with self.lock:
            return self._publish()

    def _publish(self) -> list[Path]:
        for sink in self.sinks:
            sink.close()
            _fsync_path(sink.temp)
        for sink in self.sinks:
            os.replace(sink.temp, sink.path)
        for directory in {sink.path.parent for sink in self.sinks} | {self.out_dir}:
            _fsync_path(directory)
        return [sink.path for sink in self.sinks]

    def discard(self) -> None:
        """Close and remove the temporary files (after a failure), once no write runs."""
        with self.lock:
            for sink in self.sinks:
                with contextlib.suppress(Exception):
                    sink.close()
                with contextlib.suppress(OSError):
                    sink.temp.unlink(missing_ok=True)


# --- reading ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Position:
    last_seq: int
    batch: int
    to_seq: int


@dataclass
class _Chunk:
    rows: dict[str, list[Any]]
    last_key: tuple[int, str]
    more: bool


async def _read_position(engine: AsyncEngine, cursor: str) -> _Position:
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
    return _Position(last_seq, batch, int(to_seq or 0))


async def _read_chunk(
    engine: AsyncEngine, after: tuple[int, str | None], to_seq: int, limit: int
) -> _Chunk | None:
    """The next responses after the keyset ``after`` (at most ``limit``), with their child rows.

    One read transaction per chunk, so a response and its child rows come from one
    snapshot (PostgreSQL: REPEATABLE READ; SQLite transactions are serializable).
    """
    seq, rid = after
    c = responses.c
    # `change_seq >= seq` first so the index bounds the scan; (change_seq, id) breaks ties,
    # because rows archived before change tracking all share change_seq 1.
    keyset = (
        c.change_seq > seq if rid is None else and_(c.change_seq >= seq, or_(c.change_seq > seq, c.id > rid))
    )
    # A snapshot that never takes SQLite's write lock: the daemon writes on meanwhile.
    async with read_snapshot(engine) as conn:
        dialect = conn.dialect.name
        stmt = (
            _select_rows(responses, dialect)
            .where(keyset, c.change_seq <= to_seq)
            .order_by(c.change_seq, c.id)
            .limit(limit)
        )
        rows, cut = await _read_responses(conn, stmt)
        if not rows:
            return None
        last = rows[-1]
        chunk: dict[str, list[Any]] = {"responses": _json_as_text(responses, rows, dialect)}
        ids = [row[_ID] for row in rows]
        for table in EXPORTED_CHILDREN:
            stmt = _select_rows(table, dialect).where(_one_of(table.c.response_id, ids, dialect))
            result = await conn.execute(stmt.order_by(*table.primary_key.columns))
            chunk[str(table.name)] = _json_as_text(table, result.all(), dialect)
    return _Chunk(chunk, (int(last[_CHANGE_SEQ]), str(last[_ID])), more=cut or len(rows) == limit)


def _select_rows(table: Table, dialect: str) -> Select[Any]:
    """SELECT every exported column of ``table`` (``responses``: ``tools`` from its tool set);
    on SQLite, JSON columns as their stored text.

    SQLite keeps JSON as the compact text the store serialized with orjson, so it is read
    as is instead of being parsed and serialized again (that was a third of the export's
    time). PostgreSQL's jsonb comes back parsed: see :func:`_json_as_text`.
    """
    columns: list[Any] = []
    for column in exported_columns(table):
        value: Any = tool_sets.c.tools if column is EXPORTED_TOOLS else column
        if dialect == "sqlite" and column_kind(column) == "json":
            value = type_coerce(value, Text)
        columns.append(value if value is column else value.label(column.name))
    if table is not responses:
        return select(*columns)
    # raw_codec and raw_dict_id last, to decode raw (see _read_responses)
    return select(*columns, responses.c.raw_codec, responses.c.raw_dict_id).select_from(
        responses.outerjoin(tool_sets, tool_sets.c.id == responses.c.tool_set_id)
    )


def _json_as_text(table: Table, rows: Sequence[Any], dialect: str) -> list[Any]:
    """Rows with JSON columns as compact JSON text (on SQLite they already are)."""
    positions = [i for i, c in enumerate(exported_columns(table)) if column_kind(c) == "json"]
    if dialect == "sqlite" or not positions:
        return list(rows)
    converted: list[Any] = []
    for row in rows:
        values = list(row)
        for i in positions:
            if values[i] is not None:
                values[i] = json_text(values[i])  # orjson stops at 254 levels; stored values need not
        converted.append(values)
    return converted


def _one_of(column: Any, ids: list[str], dialect: str) -> Any:
    """``column IN ids`` with one bound parameter, however many IDs (no parameter limit)."""
    if dialect == "postgresql":
        return column == any_(bindparam("ids", ids, type_=ARRAY(String)))
    return column.in_(select(func.json_each(orjson.dumps(ids).decode()).table_valued("value").c.value))


_EXPORTED_NAMES = [c.name for c in exported_columns(responses)]
_ID = _EXPORTED_NAMES.index("id")
_CHANGE_SEQ = _EXPORTED_NAMES.index("change_seq")
_RAW = _EXPORTED_NAMES.index("raw")
_SHA = _EXPORTED_NAMES.index("raw_sha256")


async def _read_responses(conn: AsyncConnection, stmt: Any) -> tuple[list[list[Any]], bool]:
    """Stream the rows of ``stmt``, stopping early once their bodies reach CHUNK_BYTES.

    Returns lists of the exported columns, ``raw`` decoded (the body as received).

    Raises:
        MissingDictionary: a body's dictionary is not in the database.
        DamagedBody: a body does not decode to the bytes received.
    """
    rows: list[list[Any]] = []
    size = 0
    reader = Codec(await load_dictionaries(conn))
    result = await conn.stream(stmt.execution_options(yield_per=STREAM_ROWS))
    try:
        async for partition in result.partitions():
            for row in partition:
                values = list(row)
                dict_id = values.pop()
                raw_codec = values.pop()
                values[_RAW] = reader.decode_received(
                    values[_ID], values[_RAW], raw_codec, dict_id, values[_SHA]
                )
                rows.append(values)
                size += len(values[_RAW])
                if size >= CHUNK_BYTES:
                    return rows, True
    finally:
        await result.close()
    return rows, False


# --- the cursor ---------------------------------------------------------------------------


async def _commit_cursor(
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


async def _adopt_published_batch(
    engine: AsyncEngine, out_dir: Path, cursor: str, position: _Position
) -> _Position:
    """The cursor moved past the batch an earlier run published in ``out_dir`` but did not commit.

    An export publishes its manifest, then moves the cursor. Killed in between (or its
    commit failed), the manifest of the cursor's next batch is in ``out_dir``: a loader may
    have read it already, so that batch is final. Writing it again under the same names
    with the rows archived since would hide those rows from every loader that loads a
    manifest once, so the cursor is moved to the manifest's ``to_seq`` instead, and the
    export goes on with the batch after it. A manifest that does not fit the cursor (another
    ``from_seq``, a ``to_seq`` the database does not reach, a file of it missing) is
    written again, as before; so is one whose last response (``last`` in the manifest) the
    database does not hold at that ``change_seq`` or a later one, or whose ``responses`` file
    lacks a response the archive numbers inside the batch's range: a feed written before
    the archive was restored from a backup, whose ``change_seq`` numbers the restored
    archive then gave to other rows (see :mod:`archiver.export_check`).
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
        await asyncio.to_thread(_remove_unfinished, out_dir, cursor, batch)
        return position
    except (OSError, ValueError, TypeError, KeyError) as exc:  # not a manifest of ours: written again
        log.warning("archiver.export_manifest_ignored", cursor=cursor, batch=batch, error=str(exc))
        return position
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
        log.warning(
            "archiver.export_manifest_ignored", cursor=cursor, batch=batch, error="does not fit the archive"
        )
        return position
    await _commit_cursor(engine, cursor, batch, to_seq, exported_at)
    log.warning("archiver.export_batch_adopted", cursor=cursor, batch=batch, to_seq=to_seq)
    return _Position(to_seq, batch, position.to_seq)


async def _holds_archive_range(
    engine: AsyncEngine, out_dir: Path, manifest: dict[str, Any], last_seq: int, to_seq: int
) -> bool:
    """Whether the manifest's ``responses`` file holds every response the archive has in
    the batch's range (any fault reading it: no, and the batch is written again)."""
    from_seq = _BEFORE_ALL if manifest["full"] is True else last_seq
    try:
        (name,) = [n for n in manifest["files"] if str(n).startswith(f"{responses.name}/")]
        return await batch_holds_range(engine, out_dir / name, str(manifest["format"]), from_seq, to_seq)
    except (OSError, ValueError, KeyError, IndexError, TypeError, ImportError, csv.Error) as exc:
        log.warning("archiver.export_manifest_unreadable", file=str(exc))
        return False


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
        _arrow()
    started = time.monotonic()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _directory_lock(out_dir):
        await asyncio.to_thread(_remove_leftovers, out_dir)
        position = await _adopt_published_batch(engine, out_dir, cursor, await _read_position(engine, cursor))
        if not full and position.last_seq > position.to_seq:
            raise ExportError(
                f"cursor {cursor!r} is at change_seq {position.last_seq}, but the database only "
                f"reaches {position.to_seq}: was it restored from a backup? Export with --full "
                "or use a new --cursor"
            )
        from_seq = 0 if full else position.last_seq
        batch_no = position.batch + 1
        counts = {str(table.name): 0 for table in export_tables()}
        batch: _Batch | None = None
        writing: asyncio.Future[None] | None = None
        try:
            after: tuple[int, str | None] = (_BEFORE_ALL if full else from_seq, None)
            chunk = await _read_chunk(engine, after, position.to_seq, chunk_size)
            while chunk is not None:
                if batch is None:
                    batch = await asyncio.to_thread(_Batch.open, out_dir, fmt, cursor, batch_no)
                # The chunk is written in a thread while the next one is read.
                writing = asyncio.ensure_future(asyncio.to_thread(batch.write, chunk))
                for name, rows in chunk.rows.items():
                    counts[name] += len(rows)
                after = chunk.last_key
                chunk = await _read_chunk(engine, after, position.to_seq, chunk_size) if chunk.more else None
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
            "exported_at": _iso_utc(exported_at),
            "generated_by": f"archiver {__version__}",
        }
        schema = orjson.dumps(schema_document(), option=orjson.OPT_INDENT_2) + b"\n"
        manifest_bytes = orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n"
        # Shielded: the thread finishes (or removes the batch) whatever happens to this task.
        await asyncio.shield(
            asyncio.to_thread(
                _write_manifest, out_dir, paths, out_dir / manifest_path, manifest_bytes, schema
            )
        )
        # Last: a crash before this line makes the next run write the same batch again.
        try:
            await _commit_cursor(engine, cursor, batch_no, position.to_seq, exported_at)
        except CursorMoved:
            # The cursor counts these rows as delivered by the other export: a batch left
            # here would be loaded beside a cursor that never moved through it.
            await asyncio.to_thread(_unpublish, [*paths, out_dir / manifest_path])
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
