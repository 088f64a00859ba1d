"""A hostile tester's findings on issue 17's storage changes (tool_sets, the codec, enqueue order).

Each test makes the fault happen for real: a hostile aiohttp server in the test sends the
bodies, the writer runs as it does in production (its own process where it says so), and
the archive is a real SQLite file or the PostgreSQL server of the fixtures.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import tracemalloc
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from sqlalchemy import JSON, DateTime, LargeBinary, bindparam, select, text
from sqlalchemy.dialects import postgresql

from archiver.commands import show
from archiver.db import open_database
from archiver.errors import ArchiverError, SchemaError
from archiver.export import export
from archiver.migrate import migrate
from archiver.queue import QueueStore
from archiver.renormalize import renormalize
from archiver.schema import responses
from archiver.worker import Worker
from tests.history import engine_at
from tests.loopback import serving

pytestmark = pytest.mark.timeout(120)


@contextlib.asynccontextmanager
async def serve_bodies(
    bodies: Mapping[str, bytes], routes: Mapping[str, Any] | None = None
) -> AsyncIterator[str]:
    """A provider that answers each ID with its bytes, exactly (and ``routes``: more GET
    handlers by path); its base URL."""

    async def answer(request: web.Request) -> web.Response:
        raw = bodies.get(request.match_info["rid"])
        if raw is None:
            return web.json_response(
                {"error": {"message": "not found", "type": "invalid_request_error"}}, status=404
            )
        return web.Response(body=raw, content_type="application/json")

    app = web.Application()
    app.router.add_get("/v1/responses/{rid}", answer)
    for path, handler in (routes or {}).items():
        app.router.add_get(path, handler)
    async with serving(app) as origin:
        yield f"{origin}/v1"


def body(rid: str, tools: bytes | None, text_: bytes = b'"Hi"') -> bytes:
    """A completed Response body built as bytes, so it can hold what a parser changes."""
    tools_field = b"" if tools is None else b',"tools":' + tools
    return (
        b'{"id":"%s","object":"response","status":"completed","model":"qwen-plus"%s,"output":'
        b'[{"type":"message","role":"assistant","content":[{"type":"output_text","text":%s}]}]}'
        % (rid.encode(), tools_field, text_)
    )


def responses_json_type() -> Any:
    """The type of the 0014 ``responses.tools`` column (JSON; jsonb on PostgreSQL)."""
    return JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


async def states(engine: Any) -> dict[str, str]:
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT id, state FROM archive_queue"))
        return {rid: state for rid, state in rows}


async def tool_set_ids(engine: Any) -> dict[str, int | None]:
    async with engine.connect() as conn:
        return dict((await conn.execute(select(responses.c.id, responses.c.tool_set_id))).all())


JSON_ORJSON_REFUSES = {
    # A token boundary inside an emoji: real model output (archiver.policy._loads_stdlib).
    "resp_lone_surrogate": body(
        "resp_lone_surrogate", b'[{"type":"function","name":"\\ud83d"}]', b'"\\ud83d"'
    ),
    # Valid JSON whose number is beyond a double.
    "resp_huge_number": body("resp_huge_number", b'[{"type":"function","x":1e400}]'),
}


@pytest.mark.parametrize("writer", ["process", "inline"])
async def test_bodies_orjson_refuses_are_archived_by_every_writer_and_renormalized(
    writer: str, sqlite_url: str, make_settings: Any
) -> None:
    """Valid JSON that only the standard library parses (lone surrogates, 1e400) is
    archived whichever writer runs, and renormalize rebuilds it to the same tool set.

    Found: the writer process received ``raw`` only and parsed it with orjson alone, so it
    failed these IDs ("normalization failed: JSONDecodeError"), a body the fetcher had
    accepted never archived; renormalize and compact failed on them the same way.
    """
    async with serve_bodies(JSON_ORJSON_REFUSES) as base_url, open_database(sqlite_url) as engine:
        await QueueStore(engine).enqueue(sorted(JSON_ORJSON_REFUSES))
        await Worker(make_settings(sqlite_url, base_url, writer=writer), engine, once=True).run()
        assert await states(engine) == dict.fromkeys(JSON_ORJSON_REFUSES, "archived")
        before = await tool_set_ids(engine)
        assert all(before.values())
        result = await renormalize(engine, everything=True, batch_size=10)
        assert (result.report.rewritten, result.report.failed) == (len(JSON_ORJSON_REFUSES), 0)
        assert await tool_set_ids(engine) == before
    for rid, raw in JSON_ORJSON_REFUSES.items():
        assert await show(make_settings(sqlite_url), rid) == raw


NUMBERS_JSONB_REWRITES = {
    # As the 0014 writer stored them (orjson): jsonb prints 1e18 as an integer and has no -0.
    "resp_exponent": b'[{"type":"function","parameters":{"maximum":1e18}}]',
    "resp_negative_zero": b'[{"type":"function","parameters":{"default":-0.0}}]',
}


async def test_migration_0015_digests_what_the_writer_digests(db_url: str, make_settings: Any) -> None:
    """A tools value moved by migration 0015 is found again by the writer (and renormalize):
    archiving a body with the same tools adds no tool set.

    Found on PostgreSQL: the migration digests ``tools::text``, which jsonb has already
    rewritten (``1e18`` -> ``1000000000000000000``, ``-0.0`` -> ``0.0``), so its digest is
    not the writer's: the next body with that array gets a second set, and renormalize
    moves every old response to it. Fixed: both digest integral floats as ints.
    """
    async with engine_at(db_url, "0014") as engine:
        async with engine.begin() as conn:
            insert = text(
                "INSERT INTO responses (id, status, tools, raw, raw_sha256, fetched_at, archived_at, "
                "change_seq) VALUES (:id, 'completed', :tools, :raw, :sha, :at, :at, :seq)"
            ).bindparams(
                bindparam("raw", type_=LargeBinary()),
                bindparam("at", type_=DateTime(timezone=True)),
                bindparam("tools", type_=responses_json_type()),
            )
            for seq, (rid, tools) in enumerate(NUMBERS_JSONB_REWRITES.items(), start=1):
                raw = body(rid, tools)
                await conn.execute(
                    insert,
                    {
                        "id": rid,
                        "tools": orjson.loads(tools),
                        "raw": raw,
                        "sha": hashlib.sha256(raw).hexdigest(),
                        "at": datetime(2026, 11, 1, tzinfo=UTC),
                        "seq": seq,
                    },
                )
        await migrate(engine)
        moved = await tool_set_ids(engine)
    again = {f"{rid}_again": body(f"{rid}_again", tools) for rid, tools in NUMBERS_JSONB_REWRITES.items()}
    async with serve_bodies(again) as base_url, open_database(db_url) as engine:
        await QueueStore(engine).enqueue(sorted(again))
        await Worker(make_settings(db_url, base_url, writer="inline"), engine, once=True).run()
        archived = await tool_set_ids(engine)
        assert {rid: archived[f"{rid}_again"] for rid in NUMBERS_JSONB_REWRITES} == moved
        await renormalize(engine, everything=True, batch_size=10)
        assert {rid: set_id for rid, set_id in (await tool_set_ids(engine)).items() if rid in moved} == moved


@pytest.mark.parametrize("writer", ["process", "inline"])
async def test_a_schema_changed_under_a_running_writer_stops_it_at_once(
    writer: str, db_url: str, make_settings: Any, mock_api: Any
) -> None:
    """Another version migrated the archive under a running daemon (migration 0015 drops
    ``responses.tools``, which the 0014 writer inserts): the run stops with one line that
    says so, instead of retrying every batch for a minute.

    Found: SQLite's "table responses has no column named tools" is an OperationalError, so
    it was retried as transient (12 attempts, about 60 s a batch; a 0014 daemon took three
    minutes to honour SIGTERM, past systemd's stop timeout). On PostgreSQL ("column ... does
    not exist", 42703) each body was then written alone and every ID failed ("cannot store
    the response"): a 0014 daemon failed 856 IDs in the 3 s after 0015 was applied.
    """
    async with open_database(db_url) as engine:
        await QueueStore(engine).enqueue([f"resp_ok{i}_x" for i in range(20)])
        async with engine.begin() as conn:  # what the writer of another version finds
            await conn.execute(text("ALTER TABLE responses RENAME COLUMN tool_set_id TO tool_set_of_v2"))
        settings = make_settings(db_url, mock_api.base_url, writer=writer)
        with pytest.raises(ArchiverError, match="schema") as raised:
            await Worker(settings, engine, once=True).run()
        assert "\n" not in str(raised.value)
        assert set((await states(engine)).values()) == {"pending"}


async def test_migration_0015_names_an_operators_view_on_responses_tools(db_url: str) -> None:
    """An operator's view that reads ``responses.tools`` (which 0015 drops): the migration
    changes nothing and says which view and what to do, in one line.

    Found: the migration failed with the database's own words ("error in view my_tools after
    drop column: no such column: tools"), and every command with it, ``status`` and
    ``show`` included: nothing said that 0015 moves tools to ``response_tools``.
    """
    async with engine_at(db_url, "0014") as engine:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE VIEW my_tools AS SELECT id, tools FROM responses"))
        with pytest.raises(SchemaError) as raised:
            await migrate(engine)
        message = str(raised.value)
        assert "my_tools" in message and "response_tools" in message and "\n" not in message
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar() == "0014"
            await conn.execute(text("SELECT id, tools FROM my_tools"))


DEEP = b"[" * 300 + b"]" * 300
"""Valid JSON nested deeper than orjson writes (254 levels); the body parser takes it."""


async def test_tools_nested_deeper_than_orjson_writes_are_exported(
    db_url: str, make_settings: Any, tmp_path: Path
) -> None:
    """A ``tools`` value nested 300 deep is archived and exported like any other.

    Found on PostgreSQL: the export turned jsonb values back into text with orjson alone,
    which stops at 254 levels: ``TypeError: Recursion limit reached`` (a traceback), at the
    same row on every run, so nothing after it could ever be exported.
    """
    bodies = {"resp_deep_tools": body("resp_deep_tools", DEEP)}
    async with serve_bodies(bodies) as base_url, open_database(db_url) as engine:
        await QueueStore(engine).enqueue(sorted(bodies))
        await Worker(make_settings(db_url, base_url, writer="inline"), engine, once=True).run()
        assert await states(engine) == {"resp_deep_tools": "archived"}
        await export(engine, tmp_path / "out", fmt="jsonl")
    (exported,) = (tmp_path / "out" / "responses").glob("*.jsonl")
    (row,) = [json.loads(line) for line in exported.read_text().splitlines()]
    assert json.loads(row["tools"]) == json.loads(DEEP)


@contextlib.asynccontextmanager
async def serve_with_input_items(
    bodies: Mapping[str, bytes], items: Mapping[str, bytes]
) -> AsyncIterator[str]:
    """A provider that answers each ID with its bytes and its one page of input items."""

    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=bodies[request.match_info["rid"]], content_type="application/json")

    async def page(request: web.Request) -> web.Response:
        return web.Response(body=items[request.match_info["rid"]], content_type="application/json")

    app = web.Application()
    app.router.add_get("/v1/responses/{rid}", answer)
    app.router.add_get("/v1/responses/{rid}/input_items", page)
    async with serving(app) as origin:
        yield f"{origin}/v1"


async def test_an_input_item_nested_deeper_than_orjson_writes_is_archived(
    db_url: str, make_settings: Any
) -> None:
    """With ``--with-input-items``, an input item nested 300 deep (a tool call's arguments
    as JSON, say) is archived with its response.

    Found: the writer digests the list of input items with orjson alone
    (``response_upsert._input_items_digest``), which stops at 254 levels, so it failed the ID:
    "cannot store the response: JSONEncodeError: Recursion limit reached".
    """
    rid = "resp_deep_input"
    item = (
        b'{"id":"msg_1","type":"message","role":"user","content":[{"type":"input_text","text":"hi"}],"x":%s}'
    )
    page = b'{"object":"list","data":[%s],"first_id":"msg_1","last_id":"msg_1","has_more":false}' % (
        item % DEEP
    )
    bodies = {rid: body(rid, None)}
    async with serve_with_input_items(bodies, {rid: page}) as base_url, open_database(db_url) as engine:
        await QueueStore(engine).enqueue([rid])
        settings = make_settings(db_url, base_url, writer="inline", with_input_items=True)
        await Worker(settings, engine, once=True).run()
        assert await states(engine) == {rid: "archived"}
    assert await show(make_settings(db_url), rid) == bodies[rid]


async def test_migration_0015_holds_a_bounded_share_of_the_tools_it_moves(sqlite_url: str) -> None:
    """Many distinct large ``tools`` values (a provider that varies them per response):
    migration 0015 digests them a bounded number of bytes at a time.

    Found: it read them 1,000 values at a time whatever their size: 300 distinct 1 MB
    arrays took ``archiver migrate`` to 379 MB of RSS (1,000 of 2 MB: over 2 GB, on the
    machine that runs the daemon, at every start until it succeeds).
    """
    count, size = 48, 1 << 20
    async with engine_at(sqlite_url, "0014") as engine:
        async with engine.begin() as conn:
            for n in range(count):
                tools = orjson.dumps([{"type": "function", "name": f"f{n}", "description": "d" * size}])
                await conn.execute(
                    text(
                        "INSERT INTO responses (id, status, tools, raw, raw_sha256, fetched_at, archived_at, "
                        "change_seq) VALUES (:id, 'completed', :tools, X'7B7D', 'x', '2026-11-01', "
                        "'2026-11-01', :seq)"
                    ),
                    {"id": f"resp_{n}", "tools": tools.decode(), "seq": n + 1},
                )
        tracemalloc.start()
        try:
            await migrate(engine)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 32 * size, f"{peak / size:.0f} MiB held to move {count} MiB of tools"
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM tool_sets"))).scalar() == count
