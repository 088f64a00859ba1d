"""include[]: gated fields archived when asked for, absent when not; a rejected value is dropped.

Real HTTP to the mock API over loopback, real SQLite and PostgreSQL, and ``archiver show``
run as the CLI.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import orjson
import structlog
from aiohttp import web
from sqlalchemy import text

from archiver.client import ResponsesClient
from archiver.db import open_database
from archiver.mockapi import GATED_INCLUDE, MockConfig, body_for, input_items_for, start_mock_server
from archiver.policy import OPENAI_INCLUDE
from archiver.queue import QueueStore
from archiver.store import ArchiveStore
from archiver.worker import Worker
from tests.loopback import serving

RESPONSE_GATES = (
    "reasoning.encrypted_content",
    "file_search_call.results",
    "web_search_call.action.sources",
    "message.output_text.logprobs",
    "code_interpreter_call.outputs",
)


async def rows(engine: Any, sql: str, **params: Any) -> list[Any]:
    async with engine.connect() as conn:
        return list((await conn.execute(text(sql), params)).fetchall())


def show(db_url: str, response_id: str) -> bytes:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARCHIVER_")}
    done = subprocess.run(
        [sys.executable, "-m", "archiver", "show", response_id, "--database-url", db_url],
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def gated_fields(raw: bytes) -> dict[str, bool]:
    """Which include-gated fields a gated body carries."""
    items = {item["type"]: item for item in orjson.loads(raw)["output"]}
    return {
        "reasoning.encrypted_content": "encrypted_content" in items["reasoning"],
        "file_search_call.results": items["file_search_call"]["results"] is not None,
        "web_search_call.action.sources": "sources" in items["web_search_call"]["action"],
        "message.output_text.logprobs": "logprobs" in items["message"]["content"][0],
        "code_interpreter_call.outputs": items["code_interpreter_call"]["outputs"] is not None,
    }


def gated_input_fields(items: list[dict[str, Any]]) -> dict[str, bool]:
    by_type = {item["type"]: item for item in items}
    return {
        "message.input_image.image_url": "image_url" in by_type["message"]["content"][1],
        "computer_call_output.output.image_url": "image_url" in by_type["computer_call_output"]["output"],
    }


async def stored_input_items(engine: Any, rid: str) -> list[dict[str, Any]]:
    got = await rows(engine, "SELECT item FROM input_items WHERE response_id = :i ORDER BY position", i=rid)
    return [r[0] if isinstance(r[0], dict) else orjson.loads(r[0]) for r in got]


async def test_gated_fields_are_archived_with_the_openai_default(db_url: str, make_settings: Any) -> None:
    rid = "resp_gated_all"
    async with await start_mock_server() as mock:
        # A loopback base URL is "generic": the openai profile is chosen explicitly.
        settings = make_settings(db_url, mock.base_url, provider="openai", with_input_items=True)
        assert settings.include_values == OPENAI_INCLUDE
        async with open_database(db_url) as engine:
            await QueueStore(engine).enqueue([rid])
            summary = await Worker(settings, engine, once=True).run()
            assert summary.archived == 1
            # Every request (the response and its input items page) carried every value.
            assert mock.stats.include_by_id[rid] == [list(OPENAI_INCLUDE), list(OPENAI_INCLUDE)]
            want = body_for(rid, include=OPENAI_INCLUDE)
            assert want != body_for(rid)
            assert all(gated_fields(want).values())
            assert await ArchiveStore(engine).raw_body(rid) == want
            items = await stored_input_items(engine, rid)
            assert items == list(input_items_for(rid, OPENAI_INCLUDE))
            assert all(gated_input_fields(items).values())
    assert show(db_url, rid) == want


async def test_gated_fields_are_absent_without_include(db_url: str, make_settings: Any) -> None:
    explicit_none, by_default = "resp_gated_none", "resp_gated_generic"
    async with await start_mock_server() as mock, open_database(db_url) as engine:
        queue = QueueStore(engine)
        # ARCHIVER_INCLUDE="" on the openai profile: nothing asked for.
        await queue.enqueue([explicit_none])
        none = make_settings(db_url, mock.base_url, provider="openai", include=(), with_input_items=True)
        assert (await Worker(none, engine, once=True).run()).archived == 1
        # The generic profile (a loopback URL) asks for nothing by default.
        await queue.enqueue([by_default])
        generic = make_settings(db_url, mock.base_url, with_input_items=True)
        assert generic.include_values == ()
        assert (await Worker(generic, engine, once=True).run()).archived == 1
        for rid in (explicit_none, by_default):
            assert rid not in mock.stats.include_by_id  # asked for nothing
            assert mock.stats.requests_by_id[rid] == mock.stats.input_items_by_id[rid] == 1
            assert not any(gated_fields(body_for(rid)).values())
            items = await stored_input_items(engine, rid)
            assert items == list(input_items_for(rid))
            assert not any(gated_input_fields(items).values())
    for rid in (explicit_none, by_default):
        assert show(db_url, rid) == body_for(rid)


async def test_one_chosen_value_only(db_url: str, make_settings: Any) -> None:
    rid = "resp_gated_one"
    async with await start_mock_server() as mock:
        settings = make_settings(db_url, mock.base_url, include=("reasoning.encrypted_content",))
        async with open_database(db_url) as engine:
            await QueueStore(engine).enqueue([rid])
            assert (await Worker(settings, engine, once=True).run()).archived == 1
            assert mock.stats.include_by_id[rid] == [["reasoning.encrypted_content"]]
    shown = show(db_url, rid)
    assert shown == body_for(rid, include=("reasoning.encrypted_content",))
    assert gated_fields(shown) == {name: name == "reasoning.encrypted_content" for name in RESPONSE_GATES}


async def test_a_rejected_value_is_dropped_and_the_id_still_archived(db_url: str, make_settings: Any) -> None:
    rejected = frozenset({"message.output_text.logprobs", "computer_call_output.output.image_url"})
    kept = [v for v in OPENAI_INCLUDE if v not in rejected]
    ids = [f"resp_gated_r{i}" for i in range(6)] + ["resp_ok_r6", "resp_ok_r7"]
    async with await start_mock_server(MockConfig(reject_include=rejected)) as mock:
        # One attempt only: had the 400 spent it, every ID would end `failed`.
        settings = make_settings(
            db_url, mock.base_url, provider="openai", with_input_items=True, max_attempts=1, concurrency=4
        )
        async with open_database(db_url) as engine:
            await QueueStore(engine).enqueue(ids)
            with structlog.testing.capture_logs() as logs:
                summary = await Worker(settings, engine, once=True).run()
            assert summary.archived == len(ids) and summary.failed == 0
            states = await rows(engine, "SELECT state, attempts FROM archive_queue ORDER BY id")
            assert states == [("archived", 1)] * len(ids)
            dropped = sorted(
                (e["endpoint"], e["include"]) for e in logs if e["event"] == "archiver.include_dropped"
            )
            # Once per value and endpoint, however many fetches were in flight with it.
            assert dropped == sorted(
                (endpoint, value) for endpoint in ("input_items", "responses") for value in rejected
            )
            assert all(e["log_level"] == "warning" for e in logs if e["event"] == "archiver.include_dropped")
            assert not [e for e in logs if e.get("log_level") == "error"]
            # After the drops, requests carry only the accepted values.
            assert mock.stats.include_by_id["resp_ok_r7"][-1] == kept
            assert mock.stats.status_counts.get("400", 0) >= 2
            for rid in ids:
                want = body_for(rid, include=kept)
                assert await ArchiveStore(engine).raw_body(rid) == want
                if rid.startswith("resp_gated"):
                    fields = gated_fields(want)
                    assert fields == {name: name not in rejected for name in RESPONSE_GATES}
                    items = await stored_input_items(engine, rid)
                    assert items == list(input_items_for(rid, kept))
                    assert gated_input_fields(items) == {
                        "message.input_image.image_url": True,
                        "computer_call_output.output.image_url": False,
                    }
    assert show(db_url, "resp_gated_r0") == body_for("resp_gated_r0", include=kept)


async def test_include_values_go_out_as_repeated_include_brackets() -> None:
    seen: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append(request.raw_path)
        return web.json_response({"object": "list", "data": [], "has_more": False, "last_id": None})

    app = web.Application()
    app.router.add_get("/v1/responses/{rid}", answer)
    app.router.add_get("/v1/responses/{rid}/input_items", answer)
    async with (
        serving(app) as origin,
        ResponsesClient(f"{origin}/v1", None, concurrency=1, request_timeout=5) as client,
    ):
        await client.fetch("resp_a", include=("reasoning.encrypted_content", "file_search_call.results"))
        await client.fetch("resp_b")
        await client.fetch_input_items_page("resp_c", None, include=GATED_INCLUDE[:1])
    assert seen == [
        "/v1/responses/resp_a?include%5B%5D=reasoning.encrypted_content&include%5B%5D=file_search_call.results",
        "/v1/responses/resp_b",
        "/v1/responses/resp_c/input_items?order=asc&limit=100&include%5B%5D=reasoning.encrypted_content",
    ]
