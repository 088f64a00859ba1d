"""Valid bodies whose numbers no double holds: every ID archived, ``show`` byte-exact.

A hostile (or merely odd) provider sends numbers the projection cannot hold: ``1e400``
(past a double), an integer of 5,000 digits (past CPython's 4,300-digit limit for
integer text, which the standard library's parse then refuses), beside an integer past
64 bits or nesting past orjson's 254 levels (which send the derived value through the
standard library's writer). ``raw`` keeps them; a derived JSON column holds JSON
``null`` there (what orjson writes for a double out of range), always valid JSON.

Found: the 5,000-digit body failed its ID as "body is not valid JSON"; with an integer
past 64 bits or deep nesting beside it, ``1e400`` was written as ``Infinity`` (not JSON):
SQLite stored the invalid text (reading it back raised), PostgreSQL refused the batch and
the ID ended ``failed``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import select, text

from archiver.commands import show
from archiver.compact import compact
from archiver.db import open_database
from archiver.export import export
from archiver.jsontext import MAX_NESTING
from archiver.queue import QueueStore
from archiver.renormalize import renormalize
from archiver.schema import responses, tool_sets
from archiver.worker import Worker
from tests.integration.test_hostile_capture import serve_bodies

pytestmark = pytest.mark.timeout(120)

BIG = 123456789012345678901234567890


def response(rid: str, fields: bytes) -> bytes:
    return (
        b'{"id":"%s","object":"response","status":"completed","model":"m",%s,"output":[{"type":'
        b'"message","role":"assistant","content":[{"type":"output_text","text":"x"}]}]}'
        % (rid.encode(), fields)
    )


DEEP = 300  # past orjson's 254 levels
BODIES = {
    "resp_huge_int": response("resp_huge_int", b'"x_huge":-' + b"7" * 5000 + b',"x_ok":1'),
    "resp_inf_and_big": response(
        "resp_inf_and_big",
        b'"x_big":%d,"x_inf":1e400,"x_neg":-2e999,'
        b'"tools":[{"type":"function","name":"f","parameters":{"m":1e400,"n":%d}}]' % (BIG, BIG),
    ),
    "resp_inf_deep": response("resp_inf_deep", b'"x_deep":' + b"[" * DEEP + b"1e400" + b"]" * DEEP),
}
EXTRA = {
    "resp_huge_int": {"x_huge": None, "x_ok": 1},
    "resp_inf_and_big": {"x_big": BIG, "x_inf": None, "x_neg": None},
}


@pytest.mark.parametrize("writer", ["inline", "process"])
async def test_numbers_no_double_holds_are_archived_and_null_in_derived_columns(
    writer: str, db_url: str, make_settings: Any
) -> None:
    async with serve_bodies(BODIES) as base_url, open_database(db_url) as engine:
        await QueueStore(engine).enqueue(list(BODIES))
        await Worker(make_settings(db_url, base_url, writer=writer, max_attempts=2), engine, once=True).run()
        async with engine.connect() as conn:
            states = dict((await conn.execute(text("SELECT id, state FROM archive_queue"))).fetchall())
            assert states == dict.fromkeys(BODIES, "archived")
            cast = "CAST(extra AS TEXT)" if engine.dialect.name == "sqlite" else "extra::text"
            for rid, stored in (await conn.execute(text(f"SELECT id, {cast} FROM responses"))).fetchall():
                assert "Infinity" not in stored and "NaN" not in stored, rid
                json.loads(stored)
            extra = dict((await conn.execute(select(responses.c.id, responses.c.extra))).fetchall())
            tools = (await conn.execute(select(tool_sets.c.tools))).scalar_one()
        assert {rid: extra[rid] for rid in EXTRA} == EXTRA
        assert tools[0]["parameters"] == {"m": None, "n": BIG}
        deep = extra["resp_inf_deep"]["x_deep"]
        for _ in range(DEEP - 1):
            (deep,) = deep
        assert deep == [None]
    for rid, raw in BODIES.items():
        assert await show(make_settings(db_url), rid) == raw


async def archive_nested(db_url: str, make_settings: Any, engine: Any) -> tuple[dict[str, bytes], list[str]]:
    """Bodies nested from 506 to 520 levels, around the archiver's own limit of 512
    (``MAX_NESTING``); the daemon archives those within it and fails the rest with a
    reason that says so. Returns the bodies and the archived IDs."""
    bodies = {  # the response object is one level, so x_nest's n arrays make n + 1
        f"resp_nest{n + 1}": response(f"resp_nest{n + 1}", b'"x_nest":' + b"[" * n + b"1" + b"]" * n)
        for n in range(505, 520, 2)
    }
    async with serve_bodies(bodies) as base_url:
        await QueueStore(engine).enqueue(list(bodies))
        await Worker(make_settings(db_url, base_url, max_attempts=1), engine, once=True).run()
    async with engine.connect() as conn:
        rows = (await conn.execute(text("SELECT id, state, last_error FROM archive_queue"))).fetchall()
    archived = sorted(rid for rid, state, _ in rows if state == "archived")
    assert archived == sorted(rid for rid in bodies if int(rid[9:]) <= MAX_NESTING)
    for rid, state, error in rows:
        if rid not in archived:
            assert state == "failed", (rid, state)
            assert f"nests deeper than the {MAX_NESTING} levels the archiver reads ({rid[9:]} levels" in error
    return bodies, archived


async def test_renormalize_and_compact_rewrite_every_body_the_daemon_archived(
    db_url: str, make_settings: Any
) -> None:
    """Found: the parse and the writer recurse, deeper in renormalize's stack than in the
    fetcher's, so renormalize failed (and before that stopped with a traceback) 6 of 20
    bodies nested 880 to 995 levels that the daemon had archived. Now the archiver reads
    512 levels at most, wherever it is called from."""
    async with open_database(db_url) as engine:
        bodies, archived = await archive_nested(db_url, make_settings, engine)
        result = await renormalize(engine, everything=True, batch_size=1)
        assert (result.report.rewritten, result.report.failed) == (len(archived), 0)
        compacted = await compact(engine, batch_size=1)
        assert compacted.report.failed == 0
    for rid in archived:
        assert await show(make_settings(db_url), rid) == bodies[rid]


async def test_a_body_nested_past_the_parser_is_not_called_invalid_json(
    sqlite_url: str, make_settings: Any
) -> None:
    """Valid JSON nested 5,000 levels: failed (the parse recurses), but the reason must not
    send the operator to the provider with "body is not valid JSON"."""
    deep = response("resp_nest5000", b'"x":' + b"[" * 5000 + b"1" + b"]" * 5000)
    async with serve_bodies({"resp_nest5000": deep}) as base_url, open_database(sqlite_url) as engine:
        await QueueStore(engine).enqueue(["resp_nest5000"])
        await Worker(make_settings(sqlite_url, base_url, max_attempts=1), engine, once=True).run()
        async with engine.connect() as conn:
            state, error = (await conn.execute(text("SELECT state, last_error FROM archive_queue"))).one()
    assert state == "failed"
    assert "not valid JSON" not in error, error
    assert "nests deeper than the 512 levels the archiver reads (5,001 levels" in error, error


async def test_a_json_column_nested_past_the_limit_before_it_existed_is_still_exported(
    db_url: str, make_settings: Any, tmp_path: Any
) -> None:
    """Rows archived before the limit may nest deeper (up to about 950 levels): the
    export reads its own JSON columns back without the limit, so it still writes them."""
    levels = 700
    deep_extra = '{"x_nest":' + "[" * levels + "1" + "]" * levels + "}"
    body = response("resp_old", b'"x":1')
    async with serve_bodies({"resp_old": body}) as base_url, open_database(db_url) as engine:
        await QueueStore(engine).enqueue(["resp_old"])
        await Worker(make_settings(db_url, base_url), engine, once=True).run()
        cast = "CAST(:deep AS jsonb)" if engine.dialect.name == "postgresql" else ":deep"
        async with engine.begin() as conn:
            await conn.execute(text(f"UPDATE responses SET extra = {cast}"), {"deep": deep_extra})
        await export(engine, tmp_path / "out", fmt="jsonl", full=True)
    (line,) = next((tmp_path / "out" / "responses").glob("*.jsonl")).read_bytes().splitlines()
    exported = json.loads(line)["extra"]
    exported = exported if isinstance(exported, str) else json.dumps(exported)
    assert json.loads(exported) == json.loads(deep_extra)
