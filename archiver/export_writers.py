"""The files of one export batch: a writer per format, and the batch that holds them.

A :class:`Batch` opens one file per exported table (see
:func:`archiver.export_schema.export_tables`) under a temporary name (``.NAME.tmp``),
writes each chunk of rows into every file (Parquet: one row group per chunk), and either
publishes them (close, fsync, rename into place) or discards them. JSON lines and CSV
write timestamps as ISO 8601 and ``raw`` as text or base64 (:func:`raw_as_text`);
Parquet writes the values as they are (pyarrow is optional: :func:`import_arrow`).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson
from sqlalchemy import Table

from archiver.export_files import fsync_path
from archiver.export_read import Chunk
from archiver.export_schema import (
    RAW_ENCODING,
    ColumnKind,
    ExportError,
    column_kind,
    export_tables,
    exported_columns,
    iso_utc,
    raw_as_text,
)


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
                values[i] = iso_utc(values[i])
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


def import_arrow() -> tuple[Any, Any]:
    """``(pyarrow, pyarrow.parquet)``.

    Raises:
        ExportError: pyarrow is not installed (it is an optional dependency).
    """
    try:
        import pyarrow as pa  # type: ignore[import-untyped,unused-ignore]
        import pyarrow.parquet as pq  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        raise ExportError("Parquet export needs pyarrow: pip install 'archiver[parquet]'") from None
    return pa, pq


def arrow_schema(table: Table) -> Any:
    """The Parquet (Arrow) schema of a table's export file."""
    pa, _ = import_arrow()
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
        self.pa, pq = import_arrow()
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


@dataclass
class Batch:
    """The open files of one batch."""

    out_dir: Path
    sinks: list[_Sink] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    """Held by each thread that writes, publishes or discards: a chunk's write cannot be
    cancelled, and a discard that closed the Parquet writer under it crashed the process
    (Ctrl-C while the task awaited the write: exit -11)."""

    @classmethod
    def open(cls, out_dir: Path, fmt: str, cursor: str, batch: int) -> Batch:
        """Open the temporary file of every exported table for batch ``batch`` in ``fmt``."""
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

    def write(self, chunk: Chunk) -> None:
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
            fsync_path(sink.temp)
        for sink in self.sinks:
            os.replace(sink.temp, sink.path)
        for directory in {sink.path.parent for sink in self.sinks} | {self.out_dir}:
            fsync_path(directory)
        return [sink.path for sink in self.sinks]

    def discard(self) -> None:
        """Close and remove the temporary files (after a failure), once no write runs."""
        with self.lock:
            for sink in self.sinks:
                with contextlib.suppress(Exception):
                    sink.close()
                with contextlib.suppress(OSError):
                    sink.temp.unlink(missing_ok=True)
