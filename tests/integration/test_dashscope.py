"""DashScope details (issue 18.5): the older application base path, its profile, and the
millisecond ``created_at`` of DashScope's input-item lists.

Real HTTP to the mock API served under DashScope's older path
``/api/v2/apps/protocols/compatible-mode/v1``, real SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import text

from archiver.archived_bodies import read_bodies
from archiver.db import open_database
from archiver.mockapi import MockConfig, body_for, start_mock_server
from archiver.queue import QueueStore
from archiver.worker import Worker

OLD_PATH = "/api/v2/apps/protocols/compatible-mode/v1"


async def test_the_older_application_path_archives_everything_with_dashscope_rules(
    db_url: str, make_settings: Any
) -> None:
    ids = [f"resp_ok_apps{i}" for i in range(12)] + ["resp_notfound_apps", "resp_flaky2_apps"]
    async with await start_mock_server(MockConfig(prefix=OLD_PATH)) as mock:
        assert mock.base_url.endswith(OLD_PATH)
        settings = make_settings(db_url, mock.base_url, with_input_items=True)
        # Served on loopback, yet DashScope's path picks DashScope's rules (error codes,
        # 7-day retention, no include values by default).
        assert settings.profile == "dashscope"
        async with open_database(db_url) as engine:
            await QueueStore(engine).enqueue(ids)
            summary = await Worker(settings, engine, once=True).run()
            async with engine.connect() as conn:
                bodies = await read_bodies(conn, ids)
                states = dict((await conn.execute(text("SELECT id, state FROM archive_queue"))).fetchall())
                items = (await conn.execute(text("SELECT count(*) FROM input_items"))).scalar()
    assert summary.archived == 13, summary
    assert states.pop("resp_notfound_apps") == "not_found"  # the JSON envelope, under the old path too
    assert set(states.values()) == {"archived"}
    for rid in states:
        assert bodies[rid] == body_for(rid), rid
    assert items and items >= 13  # input items come from the same path
    assert mock.stats.input_items_total >= 13


async def _archive_with_input_items(
    db_url: str, make_settings: Any, prefix: str, ids: list[str]
) -> list[Any]:
    async with await start_mock_server(MockConfig(prefix=prefix)) as mock:
        settings = make_settings(db_url, mock.base_url, with_input_items=True)
        async with open_database(db_url) as engine:
            await QueueStore(engine).enqueue(ids)
            summary = await Worker(settings, engine, once=True).run()
            assert summary.archived == len(ids), summary
            async with engine.connect() as conn:
                return list(
                    (
                        await conn.execute(
                            text(
                                "SELECT response_id, created_at, model, previous_response_id, extra "
                                "FROM input_item_lists ORDER BY response_id"
                            )
                        )
                    ).fetchall()
                )


async def test_the_millisecond_created_at_of_dashscope_lists_is_stored_as_the_right_time(
    db_url: str, make_settings: Any
) -> None:
    ids = [f"resp_ok_ms{i}" for i in range(6)] + ["resp_manyinputs_ms"]  # three pages
    rows = await _archive_with_input_items(db_url, make_settings, "/compatible-mode/v1", ids)
    assert [r[0] for r in rows] == sorted(ids)
    for rid, created_at, model, previous, extra in rows:
        body = orjson.loads(body_for(rid))
        if isinstance(created_at, str):  # SQLite returns the stored text through a raw query
            created_at = datetime.fromisoformat(created_at).replace(tzinfo=UTC)
        # The list says e.g. 1751234567891 (ms); the Response object 1751234567 (s).
        delta = (created_at - datetime.fromtimestamp(body["created_at"], tz=UTC)).total_seconds()
        assert 0 <= delta < 1, (rid, created_at, body["created_at"])
        assert created_at.year == datetime.fromtimestamp(body["created_at"], tz=UTC).year
        assert model == body["model"] and previous is None and extra is None


async def test_lists_without_fields_of_their_own_store_no_row(db_url: str, make_settings: Any) -> None:
    rows = await _archive_with_input_items(
        db_url, make_settings, "/v1", ["resp_ok_openai1", "resp_ok_openai2"]
    )
    assert rows == []


async def test_a_list_keeps_following_its_response_when_archived_again_without_it(
    db_url: str, make_settings: Any
) -> None:
    """A re-archive that does not fetch input items keeps the list, with the new change_seq."""
    ids = ["resp_ok_follow1", "resp_ok_follow2"]
    await _archive_with_input_items(db_url, make_settings, "/compatible-mode/v1", ids)
    # Another seed: other bodies for the same IDs; input items not fetched this time.
    config = MockConfig(prefix="/compatible-mode/v1", seed=7)
    async with await start_mock_server(config) as mock, open_database(db_url) as engine:
        await QueueStore(engine).enqueue(ids, refetch=True)
        summary = await Worker(make_settings(db_url, mock.base_url), engine, once=True).run()
        assert summary.archived == 2, summary
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    text(
                        "SELECT r.change_seq, l.change_seq FROM responses AS r "
                        "JOIN input_item_lists AS l ON l.response_id = r.id"
                    )
                )
            ).fetchall()
    assert len(rows) == 2 and all(r[0] == r[1] and r[0] > 2 for r in rows), rows
