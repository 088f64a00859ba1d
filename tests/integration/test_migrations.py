"""Migrations: ``alembic upgrade head`` builds exactly the schema the code declares.

Every test runs on SQLite and on a real PostgreSQL server (``db_url``).
"""

from __future__ import annotations

import asyncio
import json
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
from archiver.db import create_engine
from archiver.errors import NotAnArchive
from archiver.migrate import SCHEMA_HEAD, head_revision, migrate, migrate_with_alembic, schema_revision
from archiver.sqlite_engine import sqlite_write_engine
from archiver.sqlite_snapshot import SNAPSHOT_NAME, take_snapshot
from tests.history import revision_before

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


def _schema_and_rows(path: Path) -> tuple[list[tuple[Any, ...]], dict[str, list[tuple[Any, ...]]]]:
    with sqlite3.connect(path) as conn:
        entries = conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name"
        ).fetchall()
        rows = {
            name: conn.execute(f'SELECT * FROM "{name}" ORDER BY 1').fetchall()
            for (kind, name, _, _) in entries
            if kind == "table"
        }
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    return entries, rows


async def test_a_new_sqlite_archive_from_the_snapshot_is_the_file_the_migrations_build(
    tmp_path: Path,
) -> None:
    """A new SQLite archive is built from migrations/sqlite_head.json (archiver.sqlite_snapshot,
    milliseconds instead of ~0.35 s of alembic): the same tables, indexes, views, triggers (as
    SQLite keeps their text) and rows as ``upgrade head`` makes. Fails when a migration is
    added without a new snapshot: ``python -m archiver.sqlite_snapshot`` writes it."""
    built: dict[str, Any] = {}
    for way, run in (("alembic", migrate_with_alembic), ("snapshot", migrate)):
        engine = create_engine(f"sqlite:///{tmp_path / way}.db")
        try:
            await run(engine)
            async with engine.connect() as conn:
                built[way] = await conn.run_sync(take_snapshot, SCHEMA_HEAD)
        finally:
            await engine.dispose()
    entries, rows = _schema_and_rows(tmp_path / "alembic.db")
    assert {kind for kind, *_ in entries} == {"table", "index", "view"}
    assert _schema_and_rows(tmp_path / "snapshot.db") == (entries, rows)
    assert rows["alembic_version"] == [(SCHEMA_HEAD,)]
    bundled = json.loads((Path(__file__).parents[2] / "migrations" / SNAPSHOT_NAME).read_text())
    assert bundled == built["alembic"] == built["snapshot"], "run: python -m archiver.sqlite_snapshot"


async def test_a_snapshot_of_another_revision_is_never_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from archiver import sqlite_snapshot

    stale = {**sqlite_snapshot._bundled(), "revision": "0001", "statements": ["CREATE TABLE wrong (x)"]}
    monkeypatch.setattr(sqlite_snapshot, "_bundled", lambda: stale)
    engine = create_engine(f"sqlite:///{tmp_path / 'a.db'}")
    try:
        await migrate(engine)
        async with engine.connect() as conn:
            assert "wrong" not in await conn.run_sync(_table_names)
            assert await conn.run_sync(_diff) == []
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
    from archiver.migrate import SCHEMA_HEAD, head_revision

    assert head_revision() == SCHEMA_HEAD, "update archiver.migrate.SCHEMA_HEAD with the new migration"


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


async def test_existing_rows_become_source_default(db_url: str) -> None:
    from alembic import command

    from archiver.migrate import alembic_config
    from archiver.queue import QueueStore

    before = revision_before("archive_queue.source")
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


def _predicate(where: Any) -> str:
    """An index predicate as written or as reflected, in one spelling (PostgreSQL adds casts
    and parentheses)."""
    return " ".join(str(where).replace("::text", "").replace("(", " ").replace(")", " ").lower().split())


def _index_options(sync_conn: Connection) -> dict[str, Any]:
    """Per table: its partial indexes' predicates and, on SQLite, whether it has a rowid."""
    inspector = inspect(sync_conn)
    dialect = sync_conn.dialect.name
    found: dict[str, Any] = {}
    for table in schema.metadata.tables.values():
        indexes = inspector.get_indexes(table.name)
        found[table.name] = {
            "where": {
                i["name"]: _predicate(i["dialect_options"][f"{dialect}_where"])
                for i in indexes
                if i.get("dialect_options", {}).get(f"{dialect}_where") is not None
            },
        }
        if dialect == "sqlite":
            sql = sync_conn.exec_driver_sql(
                "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table.name,)
            ).scalar()
            found[table.name]["with_rowid"] = "WITHOUT ROWID" not in sql.upper()
    return found


def _declared_index_options(dialect: str) -> dict[str, Any]:
    from archiver.queue import declare_postgresql_predicates

    declare_postgresql_predicates()  # as the migrations do on PostgreSQL
    declared: dict[str, Any] = {}
    for table in schema.metadata.tables.values():
        declared[table.name] = {
            "where": {
                i.name: _predicate(i.dialect_options[dialect]["where"])
                for i in table.indexes
                if i.dialect_options[dialect]["where"] is not None
            },
        }
        if dialect == "sqlite":
            declared[table.name]["with_rowid"] = table.dialect_options["sqlite"]["with_rowid"] is not False
    return declared


async def test_partial_indexes_and_without_rowid_match_the_metadata(db_url: str) -> None:
    """What alembic's comparison does not look at: index predicates and SQLite's WITHOUT ROWID."""
    engine = create_engine(db_url)
    try:
        await migrate(engine)
        async with engine.connect() as conn:
            found = await conn.run_sync(_index_options)
        declared = _declared_index_options(engine.dialect.name)
        assert found == declared
        # The queue's predicates are there to compare (an empty comparison proves nothing).
        assert len(declared["archive_queue"]["where"]) == 5
        if engine.dialect.name == "sqlite":
            assert declared["archive_queue"]["with_rowid"] is False
            async with engine.begin() as conn:
                await conn.execute(text("DROP INDEX ix_archive_queue_pending_enqueued_at"))
                await conn.execute(
                    text(
                        "CREATE INDEX ix_archive_queue_pending_enqueued_at ON archive_queue (enqueued_at) "
                        "WHERE state = 'archived'"
                    )
                )
            async with engine.connect() as conn:
                assert await conn.run_sync(_index_options) != declared
    finally:
        await engine.dispose()


_QUEUE_ROWS = (
    # id, state, attempts, lease_expiries, polls, lease (seconds from now; None: no lease), error, body
    ("resp_pending", "pending", 2, 1, 0, None, "HTTP 503", None),
    ("resp_live_lease", "in_flight", 1, 0, 3, 600.0, None, None),
    ("resp_expired_lease", "in_flight", 4, 2, 0, -30.0, None, None),
    ("resp_archived", "archived", 1, 0, 1, None, None, None),
    ("resp_not_found", "not_found", 2, 0, 0, None, "HTTP 404: not found", None),
    ("resp_failed", "failed", 5, 0, 0, None, "not JSON", b"\x00<html>oops"),
)


async def _queue_snapshot(engine: Any) -> list[tuple[Any, ...]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT id, state, attempts, lease_expiries, polls, next_attempt_at, enqueued_at, "
                "updated_at, lease_owner, lease_token, lease_expires_at, last_status_code, last_error, "
                "last_body, last_body_bytes, last_body_sha256, response_created_at, source "
                "FROM archive_queue ORDER BY id"
            )
        )
        return [tuple(r) for r in rows]


async def test_upgrading_a_queue_in_every_state_keeps_every_row_and_lease(db_url: str) -> None:
    from alembic import command

    from archiver.migrate import alembic_config
    from archiver.queue import QueueStore, archive_queue

    before = revision_before("partial state indexes")
    engine = create_engine(db_url)
    now = 1_800_000_000.0
    try:
        async with engine.begin() as conn:
            await conn.run_sync(lambda c: command.upgrade(alembic_config(c), before))
            for n, (rid, state, attempts, expiries, polls, lease, error, body) in enumerate(_QUEUE_ROWS):
                await conn.execute(
                    archive_queue.insert(),
                    {
                        "id": rid,
                        "state": state,
                        "attempts": attempts,
                        "lease_expiries": expiries,
                        "polls": polls,
                        "next_attempt_at": now + n,
                        "enqueued_at": now - 100 - n,
                        "updated_at": now - 10 - n,
                        "lease_owner": "host:1" if lease is not None else None,
                        "lease_token": f"token-{rid}" if lease is not None else None,
                        "lease_expires_at": now + lease if lease is not None else None,
                        "last_status_code": 503 if error else None,
                        "last_error": error,
                        "last_body": body,
                        "last_body_bytes": len(body) if body else None,
                        "last_body_sha256": "ab" * 32 if body else None,
                        "response_created_at": now - 1000 if n % 2 else None,
                        "source": "default" if n % 2 else "proj-a",
                    },
                )
            # Many rows: the copy is one INSERT ... SELECT, whatever the queue holds.
            await conn.execute(
                text(
                    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000) "
                    "INSERT INTO archive_queue (id, state, next_attempt_at, enqueued_at, updated_at) "
                    "SELECT 'resp_bulk_' || i, 'archived', i, i, i FROM n"
                )
            )
        rows_before = await _queue_snapshot(engine)
        await migrate(engine)
        assert await schema_revision(engine) == head_revision()
        assert await _queue_snapshot(engine) == rows_before
        async with engine.connect() as conn:
            assert await conn.run_sync(_diff) == []
        queue = QueueStore(engine)
        # The live lease is still honoured: its heartbeat finds the row.
        assert await queue.extend_leases(["token-resp_live_lease"], 60) == 1
        counts = await queue.counts()
        assert counts == {"pending": 1, "in_flight": 2, "archived": 3001, "not_found": 1, "failed": 1}
        rows_after = await _queue_snapshot(engine)

        async with engine.begin() as conn:
            await conn.run_sync(lambda c: command.downgrade(alembic_config(c), before))
        assert await _queue_snapshot(engine) == rows_after
        async with engine.connect() as conn:
            names = await conn.run_sync(
                lambda c: {i["name"] for i in inspect(c).get_indexes("archive_queue")}
            )
            assert names == {
                "ix_archive_queue_state_next_attempt_at",
                "ix_archive_queue_source_state_next_attempt_at",
            }
            model = await conn.run_sync(lambda c: {i["name"] for i in inspect(c).get_indexes("responses")})
            assert "ix_responses_model" in model
        await migrate(engine)
        assert await _queue_snapshot(engine) == rows_after
        async with engine.connect() as conn:
            assert await conn.run_sync(_diff) == []
    finally:
        await engine.dispose()
