"""The archive's rows: inserting them, deleting a response's child rows, and the change counter.

Shared by the batch writer (:mod:`archiver.response_upsert`) and the rebuild
(:mod:`archiver.reprojection`). On SQLite, INSERTs skip SQLAlchemy's per-row work (the hot
path; the profile in bench/README.md shows why).
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Boolean, DateTime, Table, delete, text
from sqlalchemy.engine import Connection, Dialect

from archiver.jsontext import json_text
from archiver.normalize import map_strings
from archiver.schema import (
    CHILD_TABLES,
    input_item_contents,
    input_item_lists,
    is_json_type,
    response_input_items,
    responses,
    sqlite_timestamp_text,
)

IN_CHUNK = 500


def in_chunks(items: Sequence[str]) -> Iterable[list[str]]:
    """``items`` in lists of at most :data:`IN_CHUNK`, each one ``IN`` list of a statement
    (PostgreSQL takes at most 32,767 parameters in one)."""
    for start in range(0, len(items), IN_CHUNK):
        yield list(items[start : start + IN_CHUNK])


def scrub_nul(value: Any) -> Any:
    """Replace NUL characters (which PostgreSQL text and jsonb reject) with U+FFFD.

    Only derived columns are scrubbed; ``raw`` keeps the exact bytes.
    """
    return map_strings(value, _replace_nul)


def _replace_nul(text_: str) -> str:
    return text_.replace("\x00", "\ufffd") if "\x00" in text_ else text_


def _sqlite_json(value: Any) -> str | None:
    return None if value is None else json_text(value)


def _sqlite_bool(value: Any) -> int | None:
    return None if value is None else int(value)


class _FastInsert:
    """A table's INSERT with DB-API parameters and per-column converters, built once.

    Equivalent to ``conn.execute(table.insert(), rows)`` on SQLite, which spends most of
    its time building parameters row by row; the profile in bench/README.md shows why.
    """

    def __init__(self, table: Table, dialect: Any) -> None:
        quote = dialect.identifier_preparer.quote
        self.names = [column.name for column in table.columns]
        self.sql = (
            f"INSERT INTO {quote(table.name)} ({', '.join(quote(n) for n in self.names)}) "
            f"VALUES ({', '.join('?' for _ in self.names)})"
        )
        self.converters: list[Any] = []
        for column in table.columns:
            kind = column.type
            if is_json_type(kind):
                self.converters.append(_sqlite_json)
            elif isinstance(kind, DateTime):
                self.converters.append(sqlite_timestamp_text)
            elif isinstance(kind, Boolean):
                self.converters.append(_sqlite_bool)
            else:
                self.converters.append(None)

    def params(self, rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        """One tuple per row, in column order."""
        # itemgetter picks every column in C; only the few converted columns run Python.
        pick = operator.itemgetter(*self.names)
        convert = [(i, f) for i, f in enumerate(self.converters) if f is not None]
        if not convert:
            return [pick(row) for row in rows]
        out: list[tuple[Any, ...]] = []
        for row in rows:
            values = list(pick(row))
            for i, f in convert:
                values[i] = f(values[i])
            out.append(tuple(values))
        return out


class ArchiveRows:
    """INSERTs and DELETEs of archive rows in a transaction open on a connection of one database.

    Args:
        dialect: the database's dialect (SQLite gets the fast INSERTs).
    """

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect.name
        self._fast_inserts = (
            {
                table.name: _FastInsert(table, dialect)
                for table in (responses, *CHILD_TABLES, response_input_items, input_item_lists)
            }
            if self.dialect == "sqlite"
            else None
        )

    def insert(self, conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
        """INSERT many rows. On SQLite without SQLAlchemy's per-row work (the hot path)."""
        if self._fast_inserts is None:
            conn.execute(table.insert(), rows)
            return
        fast = self._fast_inserts[table.name]
        conn.exec_driver_sql(fast.sql, fast.params(rows))

    def delete_children(self, conn: Connection, response_ids: list[str]) -> None:
        """Delete the child rows (not the input items) of at most ``IN_CHUNK`` responses.

        The first half of replacing a response's rows: the writer
        (:func:`archiver.response_upsert.write_responses`) and the rebuild
        (:func:`archiver.reprojection.rewrite_projection`) insert the new ones in the same
        transaction.
        """
        for table in CHILD_TABLES:
            conn.execute(delete(table).where(table.c.response_id.in_(response_ids)))

    def insert_input_items(self, conn: Connection, rows: list[dict[str, Any]]) -> int:
        """Store each distinct item once and every response's ordered list of item hashes.

        Contents go in sorted by hash, so two writers inserting overlapping items on
        PostgreSQL wait for each other in one order and cannot deadlock. Returns the
        number of items listed (one ``response_input_items`` row each).
        """
        contents = sorted({row["item_sha256"]: row["item"] for row in rows}.items())
        if self.dialect == "sqlite":
            conn.exec_driver_sql(
                "INSERT INTO input_item_contents (sha256, item) VALUES (?, ?) "
                "ON CONFLICT (sha256) DO NOTHING",
                [(sha, json_text(item)) for sha, item in contents],
            )
        else:
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            conn.execute(
                pg_insert(input_item_contents).on_conflict_do_nothing(index_elements=["sha256"]),
                [{"sha256": sha, "item": item} for sha, item in contents],
            )
        self.insert(conn, response_input_items, rows)
        return len(rows)

    def next_change_seqs(self, conn: Connection, count: int) -> int:
        """Reserve ``count`` change sequence numbers; returns the first."""
        result = conn.execute(
            text("UPDATE archive_changes SET seq = seq + :n WHERE name = 'archive' RETURNING seq"),
            {"n": count},
        )
        last = result.scalar()
        if last is None:  # the counter row was removed by hand: start after what exists
            base = (conn.execute(text("SELECT coalesce(max(change_seq), 0) FROM responses"))).scalar()
            last = int(base or 0) + count
            conn.execute(text("INSERT INTO archive_changes (name, seq) VALUES ('archive', :s)"), {"s": last})
        return int(last) - count + 1
