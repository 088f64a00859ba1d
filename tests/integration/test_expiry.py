"""Expiry: IDs dated by created_at; 404s past retention are final; status counts the risk."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import text

from archiver.db import open_database
from archiver.ids import IdLine, parse_id_lines
from archiver.mockapi import start_mock_server
from archiver.queue import QueueStore
from archiver.worker import Worker

DAY = 86400.0


def test_created_at_is_read_from_json_lines_in_every_form() -> None:
    lines = [
        '{"id": "resp_a", "created_at": 1778676418}',
        '{"id": "resp_b", "created_at": 1778676418123}',
        '{"id": "resp_c", "created_at": "2026-05-13T12:46:58Z"}',
        '{"response": {"id": "resp_d", "created_at": 1778676418.5}}',
        '{"id": "resp_e", "created_at": "yesterday"}',
        "resp_f",
    ]
    parsed = list(parse_id_lines(lines))
    assert all(isinstance(p, IdLine) for p in parsed)
    created = [p.created_at for p in parsed]  # type: ignore[union-attr]
    assert created[0] == 1778676418.0
    assert abs(created[1] - 1778676418.123) < 1e-6
    assert created[2] == 1778676418.0
    assert created[3] == 1778676418.5
    assert created[4] is None and created[5] is None


async def test_404_past_retention_is_final_at_once(db_url: str, make_settings: Any) -> None:
    now = time.time()
    async with await start_mock_server() as mock:
        settings = make_settings(db_url, mock.base_url, retention_days=7, not_found_recheck=0.05)
        async with open_database(db_url) as engine:
            queue = QueueStore(engine)
            await queue.enqueue(
                ["resp_notfound_old", "resp_notfound_young", "resp_ok_old"],
                created_at=[now - 8 * DAY, now - 1 * DAY, now - 8 * DAY],
            )
            await Worker(settings, engine, once=True).run()
            async with engine.connect() as conn:
                rows = dict(
                    (r[0], (r[1], r[2]))
                    for r in (
                        await conn.execute(text("SELECT id, state, last_error FROM archive_queue"))
                    ).fetchall()
                )
    stats = mock.stats.as_dict()["requests_by_id"]
    assert rows["resp_notfound_old"][0] == "not_found"
    assert rows["resp_notfound_old"][1].startswith("expired: the provider keeps stored responses 7 days")
    assert stats["resp_notfound_old"] == 1, "no re-check for an expired ID"
    assert rows["resp_notfound_young"][0] == "not_found"
    assert stats["resp_notfound_young"] == 2, "a young 404 is re-checked once"
    # An old ID that still exists is archived, not written off.
    assert rows["resp_ok_old"][0] == "archived"


async def test_status_counts_ids_near_and_past_expiry(db_url: str) -> None:
    now = time.time()
    async with open_database(db_url) as engine:
        queue = QueueStore(engine)
        await queue.enqueue(
            ["resp_near", "resp_past", "resp_fresh", "resp_unknown_age"],
            created_at=[now - 6.5 * DAY, now - 7.5 * DAY, now - 1 * DAY, None],
        )
        details = await queue.status_details(retention_s=7 * DAY)
        assert details["pending_near_expiry"] == 1
        assert details["pending_past_retention"] == 1
        assert details["retention_days"] == 7
        # Without a known retention nothing is claimed about expiry.
        plain = await queue.status_details()
        assert plain["pending_near_expiry"] is None
