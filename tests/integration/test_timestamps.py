"""SQLite timestamps: whole seconds stored without a fraction, by every write path, read back alike."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select, text, update

from archiver.db import open_database
from archiver.mockapi import start_mock_server
from archiver.queue import QueueStore
from archiver.renormalize import renormalize
from archiver.schema import responses, sqlite_timestamp_text
from archiver.worker import Worker

pytestmark = pytest.mark.timeout(120)

IDS = [f"resp_ok_ts{i:03d}" for i in range(20)]


def test_the_stored_text_drops_only_a_zero_fraction() -> None:
    whole = datetime(2026, 7, 25, 14, 16, 19, tzinfo=UTC)
    assert sqlite_timestamp_text(whole) == "2026-07-25 14:16:19"
    assert sqlite_timestamp_text(whole.replace(microsecond=5)) == "2026-07-25 14:16:19.000005"
    # Naive values are UTC already; aware ones in another zone are converted.
    assert sqlite_timestamp_text(datetime(2026, 7, 25, 14, 16, 19)) == "2026-07-25 14:16:19"
    assert sqlite_timestamp_text(datetime.fromisoformat("2026-07-25T16:16:19+02:00")) == "2026-07-25 14:16:19"
    assert sqlite_timestamp_text(None) is None
    # Text order is the order of the instants, old (".000000") and new forms mixed.
    written = [
        "2026-07-25 14:16:18.900000",
        "2026-07-25 14:16:19",
        "2026-07-25 14:16:19.500000",
        "2026-07-25 14:16:20",
    ]
    assert sorted(written) == written


async def stored(engine: Any) -> list[tuple[str, str, str, str]]:
    async with engine.connect() as conn:
        rows = await conn.exec_driver_sql(
            "SELECT id, created_at, completed_at, fetched_at FROM responses ORDER BY id"
        )
        return [tuple(row) for row in rows]


async def test_writer_and_renormalize_store_whole_seconds_without_fraction(
    sqlite_url: str, make_settings: Any
) -> None:
    async with open_database(sqlite_url) as engine, await start_mock_server() as mock:
        await QueueStore(engine).enqueue(IDS)
        await Worker(make_settings(sqlite_url, mock.base_url), engine, once=True).run()
        written = await stored(engine)
        assert [row[0] for row in written] == IDS
        for _, created, completed, fetched in written:
            # The mock dates responses in whole seconds, like the providers.
            assert len(created) == len("2026-07-25 14:16:19") and "." not in created, created
            assert completed is None or "." not in completed, completed
            # Our own clock has microseconds: they are kept.
            assert datetime.fromisoformat(fetched) <= datetime.now(UTC).replace(tzinfo=None)

        async with engine.connect() as conn:
            read = (
                await conn.execute(select(responses.c.id, responses.c.created_at).order_by(responses.c.id))
            ).all()
        assert [(rid, sqlite_timestamp_text(at)) for rid, at in read] == [(row[0], row[1]) for row in written]

        # renormalize rewrites rows through an UPDATE (SQLAlchemy's own binding): same text.
        async with engine.begin() as conn:
            await conn.execute(update(responses).values(created_at=None, completed_at=None))
        result = await renormalize(engine, everything=True, batch_size=7)
        assert result.report.rewritten == len(IDS)
        assert await stored(engine) == [(rid, c, d, f) for rid, c, d, f in written]

        # Old rows keep ".000000"; datetime() compares instants written both ways.
        first = written[0]
        async with engine.begin() as conn:
            await conn.execute(
                text("UPDATE responses SET created_at = :old WHERE id = :id"),
                {"old": first[1] + ".000000", "id": first[0]},
            )
            same = (
                await conn.execute(
                    text("SELECT id FROM responses WHERE datetime(created_at) = datetime(:at)"),
                    {"at": first[1]},
                )
            ).scalars()
            assert first[0] in set(same)
            # A plain string comparison would not see them as equal: why the docs say datetime().
            plain = (
                await conn.execute(
                    text("SELECT count(*) FROM responses WHERE id = :id AND created_at = :at"),
                    {"id": first[0], "at": first[1]},
                )
            ).scalar()
        assert plain == 0
