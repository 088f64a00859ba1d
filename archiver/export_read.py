"""Reading an export's rows from the archive, one chunk at a time.

Responses are read in chunks of at most ``chunk_size`` (keyset pagination on
``(change_seq, id)``; a chunk also ends once it holds :data:`CHUNK_BYTES` of raw bodies),
each chunk with its child rows in one read transaction, so a response and its child rows
come from one snapshot. A chunk comes in pieces: the responses with the first child rows,
then further child rows, at most :data:`CHUNK_ROWS` child rows a piece, each piece
written before the next is read (one response may have more rows than a piece holds).
``raw`` is decoded to the body as received; JSON columns are read as their compact JSON
text.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import (
    String,
    Table,
    Text,
    and_,
    any_,
    bindparam,
    func,
    or_,
    select,
    type_coerce,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql import Select

from archiver.codec import Codec
from archiver.dictionaries import load_dictionaries
from archiver.export_schema import EXPORTED_CHILDREN, EXPORTED_TOOLS, column_kind, exported_columns
from archiver.jsontext import json_text
from archiver.schema import responses, tool_sets
from archiver.transactions import read_snapshot

CHUNK_BYTES = 8 * 1024 * 1024
"""A chunk also ends once its raw bodies add up to this many bytes (bounds memory)."""
CHUNK_ROWS = 65_536
"""The child rows of a chunk are read and written in pieces of at most this many: the rows
of 100 responses of 16,000 output items each, read at once, took the export to 527 MiB
(JSON lines) and 639 MiB (Parquet); one response of 400,000 rows to 239 MiB."""
STREAM_ROWS = 50
"""Responses fetched from the database cursor at a time."""
PIECE_FETCH_ROWS = 4096
"""Child rows fetched from the database cursor at a time (a divisor of CHUNK_ROWS)."""


@dataclass
class Chunk:
    """One piece of a chunk: table name -> rows (the responses in the first piece only).

    ``last_key`` is the ``(change_seq, id)`` of the chunk's last response, where the next
    chunk starts; ``more`` says whether there may be one.
    """

    rows: dict[str, list[Any]]
    last_key: tuple[int, str]
    more: bool


async def read_chunk(
    engine: AsyncEngine, after: tuple[int, str | None], to_seq: int, limit: int
) -> AsyncGenerator[Chunk, None]:
    """The pieces of the next chunk: the responses after the keyset ``after`` (at most
    ``limit``), then their child rows, :data:`CHUNK_ROWS` at most a piece. Nothing when no
    response is left.

    One read transaction per chunk, so a response and its child rows come from one
    snapshot (PostgreSQL: REPEATABLE READ; SQLite transactions are serializable); it stays
    open while the caller writes each piece, so use it with ``contextlib.aclosing``.
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
            return
        last = rows[-1]
        key, more = (int(last[_CHANGE_SEQ]), str(last[_ID])), cut or len(rows) == limit
        ids = [row[_ID] for row in rows]
        piece: dict[str, list[Any]] = {"responses": _json_as_text(responses, rows, dialect)}
        del rows
        held = 0
        for table in EXPORTED_CHILDREN:
            name = str(table.name)
            stmt = _select_rows(table, dialect).where(_one_of(table.c.response_id, ids, dialect))
            result = await conn.stream(
                stmt.order_by(*table.primary_key.columns).execution_options(yield_per=PIECE_FETCH_ROWS)
            )
            try:
                async for partition in result.partitions():
                    piece.setdefault(name, []).extend(_json_as_text(table, partition, dialect))
                    held += len(partition)
                    if held >= CHUNK_ROWS:
                        yield Chunk(piece, key, more)
                        piece, held = {}, 0
            finally:
                await result.close()
        yield Chunk(piece, key, more)


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
