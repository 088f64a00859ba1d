"""Refusing another application's database: archiver never scatters its tables among
another application's (a mistyped path to some other SQLite file, the wrong PostgreSQL
database)."""

from __future__ import annotations

import urllib.parse

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from archiver.dburl import describe_database
from archiver.errors import NotAnArchive
from archiver.redaction import redact
from archiver.transactions import is_postgres, statement_at_a_time

_MAX_NAMED_TABLES = 5


async def refuse_a_foreign_database(engine: AsyncEngine) -> None:
    """Raise :class:`NotAnArchive` when the database has tables but not archiver's.

    Checked before the first migration: archiver never scatters its tables among another
    application's (a mistyped path to some other SQLite file, the wrong PostgreSQL
    database). On PostgreSQL only the schema archiver would write into counts
    (``current_schema()``): other schemas of the same database are other applications'
    business.
    """
    if is_postgres(engine):
        query = (
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = current_schema() ORDER BY table_name"
        )
    else:
        query = _SQLITE_TABLES
    async with statement_at_a_time(engine) as conn:
        tables = [str(row[0]) for row in await conn.execute(text(query))]
    _refuse_foreign_tables(describe_database(engine.url), tables)


_SQLITE_TABLES = (
    "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite%' ORDER BY name"
)


_OWN_TABLES = frozenset({"archive_queue", "archive_changes", "archive_dictionaries"})
"""Tables only an archiver archive has: any one of them makes a database ours (a damaged
archive missing one is still an archive, for its own error to say what is wrong)."""


def _refuse_foreign_tables(where: str, tables: list[str]) -> None:
    if not tables or _OWN_TABLES.intersection(tables):
        return
    named = ", ".join(redact(t) for t in tables[:_MAX_NAMED_TABLES])
    more = len(tables) - _MAX_NAMED_TABLES
    if more > 0:
        named += f" and {more} more"
    raise NotAnArchive(
        f"{where} is not an archiver archive (it has tables of its own: {named}); "
        "point --database-url at the archive"
    )


def refuse_a_foreign_sqlite_file(path: str) -> None:
    """Raise :class:`NotAnArchive` when the SQLite file at ``path`` is another application's.

    Read through a read-only connection before archiver's own engine opens the file: that
    one would switch the file to WAL mode, a change to someone else's database. A file
    that cannot be read this way is left to the engine, which reports it.
    """
    import sqlite3

    try:
        conn = sqlite3.connect(f"file:{urllib.parse.quote(path)}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return
    try:
        tables = [str(row[0]) for row in conn.execute(_SQLITE_TABLES)]
    except sqlite3.Error:
        return
    finally:
        conn.close()
    _refuse_foreign_tables(path, tables)
