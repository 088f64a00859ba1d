"""DashScope details (issue 18.5): the older application base path, and its profile.

Real HTTP to the mock API served under DashScope's older path
``/api/v2/apps/protocols/compatible-mode/v1``, real SQLite and PostgreSQL.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from archiver.db import open_database
from archiver.mockapi import MockConfig, body_for, start_mock_server
from archiver.queue import QueueStore
from archiver.store import read_bodies
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
