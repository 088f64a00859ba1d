"""``archiver status`` against hold rows a careless operator or another archiver left behind.

``archive_workers`` is an ordinary table: a row edited by hand, written by another
version, or (on SQLite, whose columns take any value) holding text where a time belongs,
must not turn ``archiver status`` into a traceback. Status is what an operator runs when
something is already wrong.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text

from archiver import commands
from archiver.db import now_sql, open_database
from archiver.holds import Hold
from archiver.workers import record_worker

pytestmark = pytest.mark.timeout(60)

# Values a float column may hold that are no time: on PostgreSQL the IEEE specials and
# a time past datetime's range; on SQLite also text.
GARBAGE = {
    "postgresql": ["'Infinity'::float8", "'-Infinity'::float8", "'NaN'::float8", "1e300", "-1e300"],
    "sqlite": ["'abc'", "9e999", "-9e999", "1e300", "-1e300", "x'00ff'"],
}


async def test_status_skips_hold_rows_whose_times_are_no_time(db_url: str, make_settings: Any) -> None:
    settings = make_settings(db_url)
    async with open_database(db_url) as engine:
        await record_worker(
            engine,
            "live:1",
            state="paused",
            detail="cannot connect",
            base_url="http://127.0.0.1:9/v1/responses/…",
            source="default",
            hold=Hold("connect", "connection refused", 5.0),
        )
        now = now_sql(engine.dialect.name)
        for i, value in enumerate(GARBAGE[engine.dialect.name]):
            for column in ("state_since", "next_probe_at", "updated_at"):
                owner = f"odd-{column}-{i}"
                times = {"state_since": now, "next_probe_at": f"{now} + 5", "updated_at": now, column: value}
                async with engine.begin() as conn:
                    await conn.execute(
                        text(
                            "INSERT INTO archive_workers (owner, state, detail, base_url, state_since, "
                            "started_at, updated_at, source, hold_kind, hold_error, next_probe_at) VALUES "
                            f"(:owner, 'paused', 'odd', NULL, {times['state_since']}, 0, "
                            f"{times['updated_at']}, 'default', 'plain_404', 'odd', {times['next_probe_at']})"
                        ),
                        {"owner": owner},
                    )
        details = await commands.status(settings)  # raised ValueError / OverflowError
        human = commands.format_status(details)
        commands.dumps(details)
        hold = details["held_sources"]["default"]
        assert [h["owner"] for h in hold["holders"]] == ["live:1"]  # the odd rows are no live worker's
        assert hold["kind"] == "connect" and hold["stale"] is False
        assert "held by live:1, reported" in human
