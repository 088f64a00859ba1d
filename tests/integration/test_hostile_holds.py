"""``archiver status`` against hold rows a careless operator or another archiver left behind.

``archive_workers`` is an ordinary table: a row edited by hand, written by another
version, or (on SQLite, whose columns take any value) holding text where a time belongs,
must not turn ``archiver status`` into a traceback. Status is what an operator runs when
something is already wrong. And a hostile server's error text, shown as a held source's
last error, must not give the key away in a form the redaction point does not know.
"""

from __future__ import annotations

import asyncio
import urllib.parse
import uuid
from typing import Any

import pytest
from aiohttp import web
from sqlalchemy import text

from archiver import breaker, commands
from archiver.db import now_sql, open_database
from archiver.holds import STALE_AFTER_S
from archiver.queue import QueueStore
from archiver.redaction import register_secret
from archiver.worker import Worker
from tests.canaries import leaks
from tests.integration.test_holds import _age, record_connect_hold, table_text, wait_until
from tests.loopback import serving

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
        await record_connect_hold(engine, "live:1")
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


KEY = "Pw4-canary/Hq8+zN2vXc7Lr"
"""No known key shape: only its registration (as the CLI does) masks it."""

ECHOES = {
    # A server that wraps its text puts a line break into the key: each half is no more
    # than half the key, which is all a cut-off copy is masked for.
    "split_in_the_middle": f"bad path for key {KEY[:12]}\n{KEY[12:]}",
    "wrapped_every_5": "bad path for key " + "\r\n".join(KEY[i : i + 5] for i in range(0, len(KEY), 5)),
    # RFC 3986 percent-encoding allows lowercase hex digits.
    "percent_lowercase": "bad path for key "
    + urllib.parse.quote(KEY, safe="").replace("%2F", "%2f").replace("%2B", "%2b"),
    # Every byte encoded, which no encoder does but an echoing server may.
    "percent_every_byte": "bad path for key " + "".join(f"%{byte:02x}" for byte in KEY.encode()),
}


@pytest.mark.parametrize("echo", list(ECHOES))
async def test_a_held_sources_last_error_never_shows_an_echoed_key(
    db_url: str, make_settings: Any, monkeypatch: pytest.MonkeyPatch, echo: str
) -> None:
    register_secret(KEY)
    monkeypatch.setattr(breaker, "PAUSE_FIRST_S", 30.0)

    async def answer(request: web.Request) -> web.Response:
        return web.Response(status=404, text=ECHOES[echo])

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    async with serving(app) as origin:
        settings = make_settings(db_url, f"{origin}/v1", api_key=KEY)
        async with open_database(db_url) as engine:
            await QueueStore(engine).enqueue([f"resp_echo{i}" for i in range(5)])
            worker = Worker(settings, engine, once=False)
            task = asyncio.create_task(worker.run())
            try:

                async def held() -> dict[str, Any] | None:
                    details = await commands.status(settings)
                    return details if details["held_sources"] else None

                details = await wait_until(held, "status never showed the hold")
                assert "***" in details["held_sources"]["default"]["last_error"]
                shown = commands.dumps(details) + commands.format_status(details)
                assert leaks(shown.encode(), KEY) == []
                assert leaks((await table_text(engine)).encode(), KEY) == []
            finally:
                worker.request_stop("test over")
                await task


async def test_the_next_probe_is_a_live_holders_not_a_dead_ones(db_url: str, make_settings: Any) -> None:
    """A daemon killed while paused, restarted and paused again (the provider is still
    down): the dead one's probe was due long ago and never comes; status must give the
    live holder's next probe, not "now"."""
    settings = make_settings(db_url)
    async with open_database(db_url) as engine:
        for owner, probe_in in (("host:1", 5.0), ("host:2", 200.0)):
            await record_connect_hold(engine, owner, probe_in)
        await _age(engine, "host:1", STALE_AFTER_S + 5)  # killed with -9 that long ago
        details = await commands.status(settings)
    hold = details["held_sources"]["default"]
    assert [h["owner"] for h in hold["holders"]] == ["host:1", "host:2"] and hold["stale"] is False
    assert 190 < hold["next_probe_in_s"] <= 200
    assert "next probe in 3.3min" in commands.format_status(details)


async def test_a_worker_used_as_a_library_masks_its_own_key(db_url: str, make_settings: Any) -> None:
    """Found: only the CLI registered the key for redaction, so a program that builds a
    ``Worker`` itself (the public API) stored a key of no known shape that a server
    echoed in its error text. The Worker registers its settings' key and database URL."""
    key = f"Lib7-{uuid.uuid4().hex}/Qz"  # registered by no other test of this process

    async def answer(request: web.Request) -> web.Response:
        message = f"Incorrect API key provided: {key}"
        return web.json_response({"error": {"message": message, "code": "invalid_request"}}, status=400)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    async with serving(app) as origin, open_database(db_url) as engine:
        await QueueStore(engine).enqueue(["resp_lib1"])
        settings = make_settings(db_url, f"{origin}/v1", api_key=key)
        await Worker(settings, engine, once=True).run()
        async with engine.connect() as conn:
            state, error = (await conn.execute(text("SELECT state, last_error FROM archive_queue"))).one()
        assert state == "failed" and "Incorrect API key provided: ***" in error, error
        assert leaks((await table_text(engine)).encode(), key) == []
