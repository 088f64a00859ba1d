"""A new SQLite archive built from a snapshot of what the migrations build, not by them.

Running the 17 migrations on an empty SQLite file takes about 0.35 s: most of it is
alembic's batch mode reflecting and copying tables that SQLite cannot alter in place.
Every new archive, and so every test that starts one, paid it. The snapshot
(``migrations/sqlite_head.json``) holds what ``alembic upgrade head`` leaves in an empty
file: the text SQLite keeps for each table, index, view and trigger (``sqlite_master``),
and the rows the migrations write (``alembic_version`` among them). Replaying it takes
milliseconds and gives the same file: ``tests/integration/test_migrations.py`` builds one
archive each way and compares their whole ``sqlite_master`` and every row, so a new
migration without a new snapshot fails the suite (``python -m archiver.sqlite_snapshot``
writes it). A snapshot of another revision than :data:`archiver.migrate.SCHEMA_HEAD` is never
used, and a file that holds any table is always migrated by alembic.

An installed copy's snapshot may be missing, unreadable or damaged (cut short, edited by
hand): it carries the SHA-256 of its statements and rows, its shape is checked before it
is used, the replay must leave ``alembic_version`` at the head, and any of these failing
rolls the replay back and lets alembic build the archive (one warning), never a crash or
a wrong archive.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import json
import sys
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from archiver.db_faults import db_error_message, permanent_db_fault
from archiver.logs import get_logger

__all__ = ["build_from_snapshot", "create_from_snapshot", "take_snapshot"]

SNAPSHOT_NAME = "sqlite_head.json"
_KINDS = ("table", "index", "view", "trigger")  # created in this order: each may name the ones before
_OWN = "name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"  # SQLite makes its own (sqlite_sequence, autoindexes)


def take_snapshot(conn: Connection, revision: str) -> dict[str, Any]:
    """What an archive at ``revision`` holds: its schema's text in creation order, and its rows."""
    statements = [
        sql
        for kind in _KINDS
        for (sql,) in conn.exec_driver_sql(
            f"SELECT sql FROM sqlite_master WHERE type = ? AND sql IS NOT NULL AND {_OWN} ORDER BY rowid",
            (kind,),
        )
    ]
    rows: dict[str, dict[str, list[Any]]] = {}
    tables = conn.exec_driver_sql(
        f"SELECT name FROM sqlite_master WHERE type = 'table' AND {_OWN} ORDER BY name"
    )
    for (table,) in list(tables):
        result = conn.exec_driver_sql(f'SELECT * FROM "{table}" ORDER BY 1')
        data = [list(row) for row in result]
        if any(isinstance(value, bytes) for row in data for value in row):
            raise ValueError(f"table {table} holds bytes: the snapshot holds JSON values only")
        if data:
            rows[table] = {"columns": list(result.keys()), "rows": data}
    return {"revision": revision, "statements": statements, "rows": rows, "sha256": _digest(statements, rows)}


def _digest(statements: Any, rows: Any) -> str:
    return hashlib.sha256(json.dumps([statements, rows], sort_keys=True).encode()).hexdigest()


class SnapshotUnusable(Exception):
    """The bundled snapshot cannot build an archive (alembic builds it instead)."""


def _usable(loaded: object) -> bool:
    """The snapshot has the shape :func:`take_snapshot` writes and its own digest."""
    if not isinstance(loaded, dict):
        return False
    statements, rows = loaded.get("statements"), loaded.get("rows")
    if not (
        isinstance(loaded.get("revision"), str)
        and isinstance(statements, list)
        and all(isinstance(sql, str) for sql in statements)
        and isinstance(rows, dict)
        and all(_usable_rows(data) for data in rows.values())
    ):
        return False
    return loaded.get("sha256") == _digest(statements, rows)


def _usable_rows(data: object) -> bool:
    if not isinstance(data, dict):
        return False
    columns, rows = data.get("columns"), data.get("rows")
    return (
        isinstance(columns, list)
        and bool(columns)
        and all(isinstance(name, str) for name in columns)
        and isinstance(rows, list)
        and all(isinstance(row, list) and len(row) == len(columns) for row in rows)
    )


@functools.cache
def _bundled() -> dict[str, Any] | None:
    resource = importlib.resources.files("archiver.migrations").joinpath(SNAPSHOT_NAME)
    try:
        loaded: dict[str, Any] = json.loads(resource.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # missing, a directory, unreadable, not UTF-8, not JSON
        return None
    return loaded if _usable(loaded) else None


def create_from_snapshot(conn: Connection, head: str) -> bool:
    """Build the archive at revision ``head`` in the empty SQLite database of ``conn`` (in
    its transaction) from the bundled snapshot; False, doing nothing, when the database
    holds a table or the snapshot is of another revision (alembic migrates it then).
    Raises :class:`SnapshotUnusable` when the replay does not leave the archive at ``head``."""
    snapshot = _bundled()
    if snapshot is None or snapshot.get("revision") != head:
        return False
    if conn.exec_driver_sql(f"SELECT count(*) FROM sqlite_master WHERE {_OWN}").scalar():
        return False  # another process created it meanwhile, or it is not empty
    for statement in snapshot["statements"]:
        conn.exec_driver_sql(statement)
    for table, data in snapshot["rows"].items():
        names = ", ".join(f'"{name}"' for name in data["columns"])
        marks = ", ".join("?" for _ in data["columns"])
        conn.exec_driver_sql(
            f'INSERT INTO "{table}" ({names}) VALUES ({marks})', [tuple(r) for r in data["rows"]]
        )
    stamp = [tuple(row) for row in conn.exec_driver_sql("SELECT version_num FROM alembic_version")]
    if stamp != [(head,)]:
        raise SnapshotUnusable(f"it stamps the archive {stamp!r}, not {head}")
    return True


async def build_from_snapshot(engine: AsyncEngine, head: str) -> bool:
    """:func:`create_from_snapshot` in a transaction of its own: False (nothing written, one
    warning) when the snapshot's statements fail for any reason but the database's own (a
    full disk, a read-only file: those are raised, alembic would meet them too)."""
    try:
        async with engine.begin() as conn:
            return await conn.run_sync(create_from_snapshot, head)
    except (DBAPIError, SnapshotUnusable) as exc:
        if isinstance(exc, DBAPIError) and (
            permanent_db_fault(exc) is not None or "locked" in str(exc.orig).lower()
        ):
            raise
        error = db_error_message(exc) if isinstance(exc, DBAPIError) else str(exc)
        get_logger().warning("archiver.sqlite_snapshot_unusable", error=error, fallback="alembic")
        return False


def _write_snapshot(path: Path) -> None:
    """Migrate an empty file with alembic and write its snapshot to ``path`` (developers)."""
    import asyncio
    import tempfile

    from archiver.db import create_engine
    from archiver.migrate import SCHEMA_HEAD, migrate_with_alembic

    async def build(url: str) -> dict[str, Any]:
        engine = create_engine(url)
        try:
            await migrate_with_alembic(engine)
            async with engine.connect() as conn:
                return await conn.run_sync(take_snapshot, SCHEMA_HEAD)
        finally:
            await engine.dispose()

    with tempfile.TemporaryDirectory() as folder:
        snapshot = asyncio.run(build(f"sqlite:///{folder}/archive.db"))
    path.write_text(json.dumps(snapshot, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    target = (
        Path(sys.argv[1])
        if len(sys.argv) > 1
        else Path(__file__).parent.parent / "migrations" / SNAPSHOT_NAME
    )
    _write_snapshot(target)
    print(f"wrote {target}")
