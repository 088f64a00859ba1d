"""Migrations: ``alembic upgrade head`` builds exactly the schema the code declares.

Every test runs on SQLite and on a real PostgreSQL server (``db_url``).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

import archiver.queue  # noqa: F401  (registers archive_queue on the shared metadata)
from archiver import schema
from archiver.db import create_engine, head_revision, migrate, schema_revision, sqlite_write_engine
from archiver.errors import NotAnArchive

pytestmark = pytest.mark.timeout(120)

FUTURE_REVISION = "9999_from_a_newer_archiver"


def cli_env(database_url: str) -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "PYTHONPATH", "VIRTUAL_ENV", "TMPDIR")
    env = {k: v for k, v in os.environ.items() if k in keep}
    return {**env, "ARCHIVER_LOG_LEVEL": "warning", "ARCHIVER_DATABASE_URL": database_url}


def _diff(sync_conn: Connection) -> list[Any]:
    return list(compare_metadata(MigrationContext.configure(sync_conn), schema.metadata))


def _table_names(sync_conn: Connection) -> set[str]:
    return set(inspect(sync_conn).get_table_names())


def _declared_tables() -> set[str]:
    return set(schema.metadata.tables) | {"alembic_version"}


async def test_upgrade_head_on_an_empty_database_matches_the_metadata(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        assert await schema_revision(engine) is None
        await migrate(engine)
        assert await schema_revision(engine) == head_revision()
        async with engine.connect() as conn:
            # The comparison itself must see the tables (it would report them all as missing
            # if the migration had built nothing), so check the tables exist first.
            assert await conn.run_sync(_table_names) == _declared_tables()
            diff = await conn.run_sync(_diff)
        assert diff == [], f"migrations drifted from archiver.schema.metadata: {diff}"
    finally:
        await engine.dispose()


async def test_the_drift_check_sees_a_missing_column(db_url: str) -> None:
    """The comparison above can fail: drop a column and it reports it."""
    engine = create_engine(db_url)
    try:
        await migrate(engine)
        async with engine.begin() as conn:
            await conn.execute(text("ALTER TABLE archive_queue DROP COLUMN last_body"))
        async with engine.connect() as conn:
            diff = await conn.run_sync(_diff)
        assert [(d[0], d[3].name) for d in diff] == [("add_column", "last_body")], diff
    finally:
        await engine.dispose()


async def test_migrating_twice_is_a_no_op(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        await migrate(engine)
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO archive_queue (id, state, attempts, polls, next_attempt_at, "
                    "enqueued_at, updated_at) VALUES ('resp_kept', 'pending', 0, 0, 1, 1, 1)"
                )
            )
        await migrate(engine)
        assert await schema_revision(engine) == head_revision()
        async with engine.connect() as conn:
            ids = (await conn.execute(text("SELECT id FROM archive_queue"))).scalars().all()
            versions = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalars().all()
            assert await conn.run_sync(_diff) == []
        assert ids == ["resp_kept"]
        assert versions == [head_revision()]
    finally:
        await engine.dispose()


async def test_three_engines_migrating_at_once_all_succeed(db_url: str) -> None:
    engines = [create_engine(db_url) for _ in range(3)]
    try:
        results = await asyncio.gather(*(migrate(e) for e in engines), return_exceptions=True)
        assert [r for r in results if isinstance(r, BaseException)] == [], results
        for engine in engines:
            assert await schema_revision(engine) == head_revision()
        async with engines[0].connect() as conn:
            versions = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalars().all()
            assert await conn.run_sync(_diff) == []
        assert versions == [head_revision()]
    finally:
        for engine in engines:
            await engine.dispose()


async def test_a_new_sqlite_file_held_by_another_writer_is_waited_for_not_locked(tmp_path: Path) -> None:
    # Switching a new file to WAL needs it to itself, and SQLite answers "database is
    # locked" at once rather than waiting: this is how three instances starting on one new
    # file failed. The connection must wait for the other writer, then find WAL mode.
    path = tmp_path / "new.db"
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("CREATE TABLE t (x)")
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO t VALUES (1)")
    asyncio.get_running_loop().call_later(0.3, other.commit)
    engine = create_engine(f"sqlite:///{path}")
    try:
        async with engine.connect() as conn:
            mode = (await conn.execute(text("PRAGMA journal_mode"))).scalar()
        assert mode == "wal"
        assert other.execute("SELECT count(*) FROM t").fetchone() == (1,)
    finally:
        await engine.dispose()
        other.close()


async def test_the_write_engine_also_waits_for_a_new_file_held_by_another_writer(tmp_path: Path) -> None:
    # The same race for the writer's synchronous engine (sqlite_write_engine), whose
    # connect hook waits with time.sleep on its own thread.
    path = tmp_path / "new.db"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("CREATE TABLE t (x)")
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO t VALUES (1)")
    release = threading.Timer(0.3, other.commit)
    engine = create_engine(f"sqlite:///{path}")
    write_engine = sqlite_write_engine(engine)
    assert write_engine is not None
    try:
        release.start()
        mode = await asyncio.to_thread(_journal_mode, write_engine)
        assert mode == "wal"
        assert other.execute("SELECT count(*) FROM t").fetchone() == (1,)
    finally:
        release.join()
        write_engine.dispose()
        await engine.dispose()
        other.close()


def _journal_mode(engine: Engine) -> Any:
    with engine.connect() as conn:
        return conn.exec_driver_sql("PRAGMA journal_mode").scalar()


async def test_there_is_no_write_engine_where_a_second_engine_would_be_another_database(
    db_url: str,
) -> None:
    for url in (db_url, "sqlite:///:memory:"):
        engine = create_engine(url)
        try:
            expected = url.startswith("sqlite:///") and not url.endswith(":memory:")
            write_engine = sqlite_write_engine(engine)
            assert (write_engine is not None) == expected, url
            if write_engine is not None:
                write_engine.dispose()
        finally:
            await engine.dispose()


async def test_a_newer_schema_makes_status_fail_with_a_clear_message(db_url: str, tmp_path: Path) -> None:
    engine = create_engine(db_url)
    try:
        await migrate(engine)
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": FUTURE_REVISION})
    finally:
        await engine.dispose()

    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "archiver", "status", "--json"],
        capture_output=True,
        env=cli_env(db_url),
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    stderr = proc.stderr.decode()
    assert proc.returncode != 0, (proc.stdout, stderr)
    assert proc.stdout == b""
    assert "Traceback" not in stderr, stderr
    assert stderr.startswith("archiver: error: "), stderr
    assert FUTURE_REVISION in stderr, stderr
    assert "newer than this archiver knows" in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1, stderr

    # The archiver refused to touch it: the stamp is still the newer one.
    engine = create_engine(db_url)
    try:
        assert await schema_revision(engine) == FUTURE_REVISION
    finally:
        await engine.dispose()


def test_schema_head_constant_matches_the_migrations() -> None:
    from archiver.db import SCHEMA_HEAD, head_revision

    assert head_revision() == SCHEMA_HEAD, "update archiver.db.SCHEMA_HEAD with the new migration"


async def test_other_applications_can_insert_just_an_id(db_url: str, make_settings: Any) -> None:
    """DESIGN: IDs may arrive by plain INSERT from other apps; the daemon picks them up."""
    from archiver.mockapi import start_mock_server
    from archiver.queue import QueueStore
    from archiver.worker import Worker

    engine = create_engine(db_url)
    try:
        await migrate(engine)
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO archive_queue (id) VALUES ('resp_ok_plain_insert')"))
        details = await QueueStore(engine).status_details()
        assert details["states"]["pending"] == 1
        assert details["oldest_pending_age_s"] is not None and 0 <= details["oldest_pending_age_s"] < 60
        async with await start_mock_server() as mock:
            summary = await Worker(make_settings(db_url, mock.base_url), engine, once=True).run()
        assert summary.archived == 1
    finally:
        await engine.dispose()


def _revision_before_sources() -> str:
    """The revision before the one that added archive_queue.source (renumbered on rebase)."""
    from alembic.script import ScriptDirectory

    from archiver.db import alembic_config

    script = ScriptDirectory.from_config(alembic_config(None))
    for revision in script.walk_revisions():
        if "archive_queue.source" in (revision.doc or ""):
            assert isinstance(revision.down_revision, str)
            return revision.down_revision
    raise AssertionError("no migration adds archive_queue.source")


async def test_existing_rows_become_source_default(db_url: str) -> None:
    from alembic import command

    from archiver.db import alembic_config
    from archiver.queue import QueueStore

    before = _revision_before_sources()
    engine = create_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(lambda c: command.upgrade(alembic_config(c), before))
            await conn.execute(text("INSERT INTO archive_queue (id) VALUES ('resp_old_row')"))
        await migrate(engine)
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO archive_queue (id) VALUES ('resp_plain_insert')"))
            await conn.execute(text("INSERT INTO archive_queue (id, source) VALUES ('resp_other', 'proj-a')"))
        by_source = await QueueStore(engine).counts_by_source()
        assert {name: c["pending"] for name, c in by_source.items()} == {"default": 2, "proj-a": 1}
        async with engine.connect() as conn:
            assert await conn.run_sync(_diff) == []
    finally:
        await engine.dispose()


async def test_a_database_of_another_application_is_refused_and_left_alone(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE users (id integer)"))
        with pytest.raises(
            NotAnArchive, match=r"is not an archiver archive \(it has tables of its own: users\)"
        ):
            await migrate(engine)
        async with engine.connect() as conn:
            assert await conn.run_sync(_table_names) == {"users"}
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_postgresql_tables_of_other_applications_in_other_schemas_are_no_obstacle(pg_url: str) -> None:
    engine = create_engine(pg_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE SCHEMA other_app"))
            await conn.execute(text("CREATE TABLE other_app.users (id integer)"))
        await migrate(engine)
        assert await schema_revision(engine) == head_revision()
    finally:
        await engine.dispose()
