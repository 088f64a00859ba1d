"""What an export writes: its formats, its file layout, and every column's type.

The tables an export writes (``responses``, every table in
:data:`archiver.schema.CHILD_TABLES`, the ``input_items`` view and ``input_item_lists``),
the columns of each, the export type of each column (the ``type`` in ``_schema.json``),
the ``_schema.json`` document itself, and how the text formats (JSON lines, CSV) write
timestamps and binary values. Pure: no I/O.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any, Literal, get_args

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
)

from archiver import __version__
from archiver.errors import ArchiverError
from archiver.schema import (
    CHILD_TABLES,
    JSONDoc,
    input_item_lists,
    input_items,
    is_json_type,
    responses,
)

ExportFormat = Literal["jsonl", "parquet", "csv"]
FORMATS: tuple[str, ...] = get_args(ExportFormat)

SCHEMA_FILE = "_schema.json"
BATCHES_DIR = "_batches"
RAW_ENCODING = "raw_encoding"
"""Column written after ``raw`` in JSONL and CSV: ``utf-8`` or ``base64``."""
SCHEMA_VERSION = 1

ColumnKind = Literal["string", "int32", "int64", "float64", "bool", "timestamp", "json", "binary"]


class ExportError(ArchiverError):
    """The export failed."""


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


def iso_utc(value: datetime) -> str:
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
