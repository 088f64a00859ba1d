"""Bad bodies kept for forensics are bounded: a 64 KiB prefix, the whole length, its SHA-256.

Every test runs on SQLite and on a real PostgreSQL server (``db_url``).
"""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import LargeBinary, bindparam, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from archiver import schema
from archiver.db import open_database
from archiver.migrate import head_revision, migrate, schema_revision
from archiver.outcomes import FORENSIC_PREFIX_BYTES, Archived, Permanent, Retry
from archiver.queue import QueueStore
from archiver.store import ArchiveStore, FetchResult
from archiver.writer import InlineWriter
from tests.history import engine_at

pytestmark = pytest.mark.timeout(120)

PREFIX = 64 * 1024


def _diff(sync_conn: Connection) -> list[Any]:
    return list(compare_metadata(MigrationContext.configure(sync_conn), schema.metadata))


async def _body_columns(engine: AsyncEngine) -> dict[str, tuple[Any, ...]]:
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text("SELECT id, last_body, last_body_bytes, last_body_sha256 FROM archive_queue")
            )
        ).fetchall()
    return {
        r[0]: (bytes(r[1]) if r[1] is not None else None, r[2], r[3])  # bytea comes back as memoryview
        for r in rows
    }


def test_the_prefix_is_the_one_outcomes_cut_to() -> None:
    # The migration keeps its own copy of the size (migrations are frozen in time).
    assert FORENSIC_PREFIX_BYTES == PREFIX


async def test_upgrading_from_0005_cuts_old_bodies_and_records_length_and_hash(db_url: str) -> None:
    big = os.urandom(200_000)  # bytes of every value, NUL included: no text round trip
    small = b"<html>\x00 502 Bad Gateway</html>"
    async with engine_at(db_url, "0005") as engine:
        assert await schema_revision(engine) == "0005"
        async with engine.begin() as conn:
            insert = text(
                "INSERT INTO archive_queue (id, state, last_error, last_body) "
                "VALUES (:id, 'failed', 'bad body', :body)"
            ).bindparams(bindparam("body", type_=LargeBinary()))
            await conn.execute(insert, [{"id": "resp_big", "body": big}, {"id": "resp_small", "body": small}])
            await conn.execute(text("INSERT INTO archive_queue (id) VALUES ('resp_none')"))

        await migrate(engine)

        assert await schema_revision(engine) == head_revision()
        rows = await _body_columns(engine)
        assert rows["resp_big"] == (big[:PREFIX], 200_000, hashlib.sha256(big).hexdigest())
        assert rows["resp_small"] == (small, len(small), hashlib.sha256(small).hexdigest())
        assert rows["resp_none"] == (None, None, None)
        async with engine.connect() as conn:
            assert await conn.run_sync(_diff) == []


async def _claimed(engine: AsyncEngine, ids: list[str]) -> dict[str, Any]:
    queue = QueueStore(engine)
    await queue.enqueue(ids)
    jobs = await queue.claim_batch("test:1", len(ids), 60.0, 8)
    assert sorted(j.response_id for j in jobs) == sorted(ids)
    return {j.response_id: j for j in jobs}


async def test_the_store_keeps_a_prefix_length_and_hash_of_a_1mb_body(db_url: str) -> None:
    retry_body = os.urandom(1_000_000)
    failed_body = b"{not json" + b"x" * 1_048_567  # 1 MiB; prepare() fails it with the whole body
    now = datetime.now(UTC)
    async with open_database(db_url) as engine:
        jobs = await _claimed(engine, ["resp_retry", "resp_unparsable", "resp_permanent"])
        store = ArchiveStore(engine)
        writer = InlineWriter(store)
        try:
            report = await writer.write(
                [
                    # Whole bodies, as a fetcher that did not sample would hand them over.
                    FetchResult(jobs["resp_retry"], Retry(0.0, "body is not JSON", 200, retry_body), now),
                    FetchResult(
                        jobs["resp_unparsable"],
                        Archived(failed_body, 200, terminal=True, response_status="completed"),
                        now,
                    ),
                    FetchResult(
                        jobs["resp_permanent"],
                        Permanent("failed", "id differs", 200, retry_body[:100]),
                        now,
                    ),
                ]
            )
        finally:
            await writer.close()
        assert (report.retried, report.failed) == (1, 2)

        rows = await _body_columns(engine)
        assert rows["resp_retry"] == (
            retry_body[:PREFIX],
            1_000_000,
            hashlib.sha256(retry_body).hexdigest(),
        )
        assert rows["resp_unparsable"] == (
            failed_body[:PREFIX],
            len(failed_body),
            hashlib.sha256(failed_body).hexdigest(),
        )
        assert rows["resp_permanent"] == (
            retry_body[:100],
            100,
            hashlib.sha256(retry_body[:100]).hexdigest(),
        )

        details = await QueueStore(engine).status_details()
        sizes = {e["response_id"]: e.get("body_bytes") for e in details["recent_errors"]}
        assert sizes == {"resp_retry": 1_000_000, "resp_unparsable": 1_048_576, "resp_permanent": 100}

        # The retried row succeeds next time: its body and the two fields go together.
        again = await QueueStore(engine).claim_batch("test:1", 10, 60.0, 8)
        assert [j.response_id for j in again] == ["resp_retry"]
        await store.write_batch([FetchResult(again[0], Retry(0.0, "timeout", None), now)])
        assert (await _body_columns(engine))["resp_retry"] == (None, None, None)

        # `archiver retry` clears them too (bulk and by ID).
        assert await QueueStore(engine).retry(["failed"], ["resp_permanent"]) == 1
        assert await QueueStore(engine).retry(["failed"]) == 1
        rows = await _body_columns(engine)
        assert rows["resp_permanent"] == rows["resp_unparsable"] == (None, None, None)
        details = await QueueStore(engine).status_details()
        assert all("body_bytes" not in e for e in details["recent_errors"]), details["recent_errors"]
