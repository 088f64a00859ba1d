"""Hostile: a damaged ``sqlite_head.json`` in an installed copy, while a new SQLite archive is made.

``archiver.sqlite_snapshot`` replays the bundled snapshot into a new file instead of running
alembic. A copy whose snapshot is missing, unreadable or damaged (an edited, half-restored
or hand-patched install) must fall back to the migrations and build the right archive,
never crash and never build a wrong one. The snapshot is swapped through
``importlib.resources`` (where the module reads it), so these tests hold for any
implementation that reads the installed file.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import json
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from archiver import sqlite_snapshot
from archiver.db import create_engine
from archiver.migrate import SCHEMA_HEAD, migrate, migrate_with_alembic

pytestmark = pytest.mark.timeout(60)

BUNDLED = json.loads(
    (Path(__file__).parents[2] / "migrations" / sqlite_snapshot.SNAPSHOT_NAME).read_text(encoding="utf-8")
)


def _write(text: str) -> Callable[[Path], None]:
    return lambda path: path.write_text(text, encoding="utf-8")


def _json(value: Any) -> Callable[[Path], None]:
    return _write(json.dumps(value))


DAMAGE: dict[str, Callable[[Path], None]] = {
    "missing": lambda path: None,
    "not utf-8": lambda path: path.write_bytes(b"\xff\xfe{"),
    "cut short": _write(json.dumps(BUNDLED)[:4000]),
    "a directory": lambda path: path.mkdir(),
    "a json list": _json([]),
    "no statements": _json({"revision": SCHEMA_HEAD}),
    "statements as one string": _json({**BUNDLED, "statements": "CREATE TABLE x (y)"}),
    "statements lost": _json({**BUNDLED, "statements": BUNDLED["statements"][:2]}),
    "a statement garbled": _json({**BUNDLED, "statements": [*BUNDLED["statements"][:-1], "CREATE TABL x"]}),
    "a statement dropped": _json({**BUNDLED, "statements": BUNDLED["statements"][:-1]}),
    "a stamp of nonsense": _json(
        {**BUNDLED, "rows": {**BUNDLED["rows"], "alembic_version": {"columns": ["version_num"], "rows": "x"}}}
    ),
}


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A copy of the installed ``archiver.migrations`` package without its snapshot."""
    folder = tmp_path / "installed"
    shutil.copytree(
        Path(__file__).parents[2] / "migrations",
        folder,
        ignore=shutil.ignore_patterns("__pycache__", sqlite_snapshot.SNAPSHOT_NAME),
    )
    real_files = importlib.resources.files

    def files(package: Any) -> Any:
        return folder if package == "archiver.migrations" else real_files(package)

    monkeypatch.setattr(importlib.resources, "files", files)
    sqlite_snapshot._bundled.cache_clear()
    yield folder / sqlite_snapshot.SNAPSHOT_NAME
    sqlite_snapshot._bundled.cache_clear()


def _schema_and_rows(path: Path) -> tuple[list[Any], list[Any]]:
    conn = sqlite3.connect(path)
    try:
        entries = conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name"
        ).fetchall()
        stamp = conn.execute("SELECT version_num FROM alembic_version").fetchall()
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()
    return entries, stamp


async def _build(path: Path, run: Any) -> None:
    engine = create_engine(f"sqlite:///{path}")
    try:
        await run(engine)
    finally:
        await engine.dispose()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Any], list[Any]]:
    """What ``alembic upgrade head`` builds (the real package, built once)."""
    path = tmp_path_factory.mktemp("reference") / "alembic.db"
    asyncio.run(_build(path, migrate_with_alembic))
    return _schema_and_rows(path)


@pytest.mark.parametrize("damage", list(DAMAGE))
async def test_a_damaged_snapshot_falls_back_to_the_migrations(
    damage: str, installed: Path, tmp_path: Path, reference: tuple[list[Any], list[Any]]
) -> None:
    """Every damaged snapshot builds the archive alembic builds. Before the fix a JSON list
    raised AttributeError, missing keys KeyError, lost or garbled statements an SQL error
    (the command failed), and a dropped statement or a nonsense stamp were used as they
    were: an archive missing an index, or stamped 'x' (every later command: schema newer
    than this archiver knows)."""
    DAMAGE[damage](installed)
    await _build(tmp_path / "new.db", migrate)
    assert _schema_and_rows(tmp_path / "new.db") == reference
    assert reference[1] == [(SCHEMA_HEAD,)]


async def test_the_intact_snapshot_is_still_used(installed: Path, tmp_path: Path) -> None:
    """The control: the bundled snapshot through the same swap is replayed (no alembic)."""
    _json(BUNDLED)(installed)
    assert sqlite_snapshot._bundled() == BUNDLED
    await _build(tmp_path / "new.db", migrate)
    assert _schema_and_rows(tmp_path / "new.db")[1] == [(SCHEMA_HEAD,)]
