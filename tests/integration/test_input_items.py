"""--with-input-items: every page stored, same retry rules and concurrency budget; views."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import text

from archiver.archived_bodies import read_bodies
from archiver.db import open_database
from archiver.mockapi import MockConfig, body_for, input_items_for, start_mock_server
from archiver.queue import QueueStore
from archiver.worker import Worker


async def rows(engine: Any, sql: str, **params: Any) -> list[Any]:
    async with engine.connect() as conn:
        return list((await conn.execute(text(sql), params)).fetchall())


async def test_input_items_over_several_pages_are_stored_completely(db_url: str, make_settings: Any) -> None:
    ids = ["resp_manyinputs_a", "resp_ok_i1", "resp_ok_i2", "resp_inputflaky2_i3", "resp_unicode_i4"]
    async with await start_mock_server(MockConfig(latency_ms=5)) as mock:
        settings = make_settings(db_url, mock.base_url, with_input_items=True, concurrency=3, max_attempts=5)
        async with open_database(db_url) as engine:
            await QueueStore(engine).enqueue(ids)
            summary = await Worker(settings, engine, once=True).run()
            assert summary.archived == len(ids)
            stats = mock.stats.as_dict()
            for rid in ids:
                want = list(input_items_for(rid))
                got = await rows(
                    engine,
                    "SELECT position, id, item FROM input_items WHERE response_id = :i ORDER BY position",
                    i=rid,
                )
                assert [r[0] for r in got] == list(range(len(want))), rid
                assert [r[1] for r in got] == [item["id"] for item in want], rid
                assert [r[2] if isinstance(r[2], dict) else orjson.loads(r[2]) for r in got] == want, rid
            assert len(input_items_for("resp_manyinputs_a")) == 230
            assert stats["input_items_by_id"]["resp_manyinputs_a"] == 3  # three pages of 100
            # The flaky input items made the whole fetch retry, then succeed.
            assert stats["input_items_by_id"]["resp_inputflaky2_i3"] == 3
            assert stats["requests_by_id"]["resp_inputflaky2_i3"] == 3
            # Input items share the concurrency budget with the responses.
            assert stats["max_in_flight"] <= 3
            texts = await rows(
                engine, "SELECT text FROM input_items WHERE response_id = 'resp_ok_i1' AND role = 'user'"
            )
            assert texts and all(t[0] for t in texts)
            (sha,) = (await rows(engine, "SELECT input_items_sha256 FROM responses WHERE id = 'resp_ok_i1'"))[
                0
            ]
            assert sha is not None and len(sha) == 64


async def test_rearchive_without_input_items_keeps_them(db_url: str, make_settings: Any) -> None:
    rid = "resp_pending2_keep"
    async with await start_mock_server() as mock:
        with_items = make_settings(db_url, mock.base_url, with_input_items=True)
        async with open_database(db_url) as engine:
            queue = QueueStore(engine)
            await queue.enqueue([rid])
            await Worker(with_items, engine, once=True).run()
            stored = await rows(engine, "SELECT count(*) FROM input_items WHERE response_id = :i", i=rid)
            assert stored[0][0] == len(input_items_for(rid))
            # Archive it again (new bytes after a reset of the mock) without input items.
            mock.stats.reset()
            await queue.enqueue([rid], refetch=True)
            await Worker(make_settings(db_url, mock.base_url), engine, once=True).run()
            (seq,) = (await rows(engine, "SELECT change_seq FROM responses WHERE id = :i", i=rid))[0]
            kept = await rows(
                engine, "SELECT DISTINCT change_seq FROM input_items WHERE response_id = :i", i=rid
            )
            assert kept == [(seq,)]
            count = await rows(engine, "SELECT count(*) FROM input_items WHERE response_id = :i", i=rid)
            assert count[0][0] == len(input_items_for(rid))


async def test_input_items_unavailable_still_archives_the_response(
    sqlite_url: str, make_settings: Any
) -> None:
    # A provider without the input_items endpoint answers 404 there: archived without them.
    async with await start_mock_server() as mock:
        settings = make_settings(sqlite_url, mock.base_url, with_input_items=True)
        async with open_database(sqlite_url) as engine:
            await QueueStore(engine).enqueue(["resp_noinputs_1"])
            summary = await Worker(settings, engine, once=True).run()
            assert summary.archived == 1
            assert (await rows(engine, "SELECT count(*) FROM input_items"))[0][0] == 0
            raw = (await rows(engine, "SELECT id, input_items_sha256 FROM responses"))[0]
            async with engine.connect() as conn:
                body = (await read_bodies(conn, [raw[0]]))[raw[0]]
            assert body == body_for("resp_noinputs_1") and raw[1] is None
            assert mock.stats.as_dict()["input_items_by_id"]["resp_noinputs_1"] == 1


async def test_views_summarize_responses_and_daily_usage(db_url: str, make_settings: Any) -> None:
    ids = ["resp_kitchensink_v"] + [f"resp_ok_v{i}" for i in range(12)]
    async with await start_mock_server() as mock:
        settings = make_settings(db_url, mock.base_url)
        async with open_database(db_url) as engine:
            await QueueStore(engine).enqueue(ids)
            await Worker(settings, engine, once=True).run()
            summary = await rows(
                engine,
                "SELECT id, model, tool_calls, function_calls, mcp_calls, duration_s, input_tokens, "
                "output_text "
                "FROM response_summary ORDER BY id",
            )
            assert len(summary) == len(ids)
            by_id = {r[0]: r for r in summary}
            body = orjson.loads(body_for("resp_kitchensink_v"))
            tool_items = [i for i in body["output"] if i["type"] not in ("message", "reasoning")]
            assert by_id["resp_kitchensink_v"][2] == len(tool_items)
            assert by_id["resp_kitchensink_v"][3] == sum(
                1 for i in tool_items if i["type"] == "function_call"
            )
            assert by_id["resp_kitchensink_v"][4] == sum(1 for i in tool_items if i["type"] == "mcp_call")
            ok = orjson.loads(body_for("resp_ok_v1"))
            assert abs(by_id["resp_ok_v1"][5] - (ok["completed_at"] - ok["created_at"])) < 1e-3
            assert by_id["resp_ok_v1"][6] == ok["usage"]["input_tokens"]
            daily = await rows(
                engine, "SELECT day, model, responses, input_tokens, output_tokens FROM daily_usage"
            )
            assert sum(r[2] for r in daily) == len(ids)
            (total_in,) = (await rows(engine, "SELECT sum(input_tokens) FROM responses"))[0]
            assert sum(r[3] for r in daily) == total_in


async def test_a_server_that_ignores_after_does_not_duplicate_items(
    db_url: str, make_settings: Any, unused_tcp_port: int
) -> None:
    """Input items whose every page is the first one again, with has_more forever."""
    from aiohttp import web

    page = {
        "object": "list",
        "data": [
            {
                "id": "msg_a",
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "a"}],
            },
            {
                "id": "msg_b",
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "b"}],
            },
        ],
        "first_id": "msg_a",
        "last_id": "msg_b",
        "has_more": True,
    }
    pages_served = 0

    async def answer(request: web.Request) -> web.Response:
        nonlocal pages_served
        rid = request.match_info["rid"]
        if request.path.endswith("/input_items"):
            pages_served += 1
            return web.json_response(page)
        return web.Response(body=body_for(rid), content_type="application/json")

    app = web.Application()
    app.router.add_get("/v1/responses/{rid}", answer)
    app.router.add_get("/v1/responses/{rid}/input_items", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    try:
        base = f"http://127.0.0.1:{unused_tcp_port}/v1"
        settings = make_settings(db_url, base, with_input_items=True)
        async with open_database(db_url) as engine:
            await QueueStore(engine).enqueue(["resp_ok_repeat"])
            summary = await Worker(settings, engine, once=True).run()
            assert summary.archived == 1
            got = await rows(
                engine, "SELECT id FROM input_items WHERE response_id = 'resp_ok_repeat' ORDER BY position"
            )
            assert [r[0] for r in got] == ["msg_a", "msg_b"]
        assert pages_served == 2  # the repeat is noticed at once, not after 1,000 pages
    finally:
        await runner.cleanup()


async def _chain_storage(engine: Any, conversation: str, turns: int) -> tuple[int, int, int]:
    """(distinct items stored, link rows, bytes of the stored item JSON) of one conversation."""
    contents = await rows(
        engine,
        "SELECT c.sha256, c.item FROM input_item_contents AS c WHERE c.sha256 IN "
        "(SELECT l.item_sha256 FROM response_input_items AS l WHERE l.response_id LIKE :p)",
        p=f"resp_chain%_{conversation}",
    )
    links = await rows(
        engine,
        "SELECT count(*) FROM response_input_items WHERE response_id LIKE :p",
        p=f"resp_chain%_{conversation}",
    )
    stored = sum(
        len(orjson.dumps(item if isinstance(item, dict) else orjson.loads(item))) for _, item in contents
    )
    return len(contents), links[0][0], stored


async def test_a_chained_conversation_stores_each_item_once(db_url: str, make_settings: Any) -> None:
    """N turns chained by previous_response_id: 2N - 1 items stored, not N^2; the view lists them all."""
    short = [f"resp_chain{t}_short" for t in range(1, 7)]
    long = [f"resp_chain{t}_long" for t in range(1, 13)]
    async with await start_mock_server() as mock:
        settings = make_settings(db_url, mock.base_url, with_input_items=True)
        async with open_database(db_url) as engine:
            await QueueStore(engine).enqueue(short + long)
            summary = await Worker(settings, engine, once=True).run()
            assert summary.archived == len(short) + len(long)
            for rid in short + long:
                want = list(input_items_for(rid))
                got = await rows(
                    engine,
                    "SELECT position, id, role, text, item, change_seq FROM input_items "
                    "WHERE response_id = :i ORDER BY position",
                    i=rid,
                )
                assert [r[4] if isinstance(r[4], dict) else orjson.loads(r[4]) for r in got] == want, rid
                assert [(r[0], r[1], r[2]) for r in got] == [
                    (n, item["id"], item["role"]) for n, item in enumerate(want)
                ]
                assert [r[3] for r in got] == [item["content"][0]["text"] for item in want]
                (seq,) = (await rows(engine, "SELECT change_seq FROM responses WHERE id = :i", i=rid))[0]
                assert {r[5] for r in got} == {seq}
            six = await _chain_storage(engine, "short", 6)
            twelve = await _chain_storage(engine, "long", 12)
    # Items: 2N - 1 distinct ones, stored once. Listings: one small row per item per turn.
    assert six[:2] == (11, 36) and twelve[:2] == (23, 144)
    listed_six = sum(len(orjson.dumps(i)) for rid in short for i in input_items_for(rid))
    listed_twelve = sum(len(orjson.dumps(i)) for rid in long for i in input_items_for(rid))
    assert listed_twelve > 3.5 * listed_six  # what storing every turn's items would cost: N^2
    assert twelve[2] < 2.3 * six[2]  # what is stored: linear in N
    assert twelve[2] == sum(len(orjson.dumps(i)) for i in input_items_for(long[-1]))


async def test_identical_items_in_one_batch_and_across_runs(db_url: str, make_settings: Any) -> None:
    """The same conversation archived again, in another run: no item stored twice, lists intact."""
    ids = [f"resp_chain{t}_again" for t in range(1, 5)]
    async with await start_mock_server() as mock:
        settings = make_settings(db_url, mock.base_url, with_input_items=True)
        async with open_database(db_url) as engine:
            queue = QueueStore(engine)
            await queue.enqueue(ids)
            await Worker(settings, engine, once=True).run()
            mock.stats.reset()
            await queue.enqueue(ids, refetch=True)
            await Worker(settings, engine, once=True).run()
            assert (await rows(engine, "SELECT count(*) FROM input_item_contents"))[0][0] == 7
            assert (await rows(engine, "SELECT count(*) FROM response_input_items"))[0][0] == 16
            assert (await rows(engine, "SELECT count(*) FROM input_items"))[0][0] == 16
