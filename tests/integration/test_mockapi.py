"""The mock Responses API, exercised over real loopback HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
import pytest
from yarl import URL

from archiver.mockapi import (
    MockConfig,
    MockServer,
    body_for,
    build_app,
    serve_forever,
    start_mock_server,
)

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "responses"
CORPUS_FILES = ("dashscope-qwen__001.json", "pydantic-ai__012.json", "pydantic-ai__017.json")

DOCUMENTED_ITEM_TYPES = {
    "message",
    "reasoning",
    "function_call",
    "web_search_call",
    "code_interpreter_call",
    "web_extractor_call",
    "web_search_image_call",
    "image_search_call",
    "mcp_call",
    "file_search_call",
}


class Answer:
    """One HTTP answer, read in full."""

    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return orjson.loads(self.body)


Fetch = Callable[..., Awaitable[Answer]]
Factory = Callable[..., Awaitable[MockServer]]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
async def make_server() -> AsyncIterator[Factory]:
    servers: list[MockServer] = []

    async def make(**config: Any) -> MockServer:
        server = await start_mock_server(MockConfig(**config))
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.close()


@pytest.fixture
async def server(make_server: Factory) -> MockServer:
    return await make_server()


def response_url(server: MockServer, response_id: str) -> URL:
    return URL(f"{server.base_url}/responses/{quote(response_id, safe='')}", encoded=True)


def mock_url(server: MockServer, path: str) -> URL:
    return URL(server.base_url).with_path(path)


@pytest.fixture
def fetch(session: aiohttp.ClientSession) -> Fetch:
    async def fetch(
        server: MockServer,
        response_id: str,
        headers: dict[str, str] | None = None,
        timeout: float = 5.0,
    ) -> Answer:
        async with session.get(
            response_url(server, response_id),
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as resp:
            return Answer(resp.status, resp.headers, await resp.read())

    return fetch


async def get_stats(session: aiohttp.ClientSession, server: MockServer) -> dict[str, Any]:
    async with session.get(mock_url(server, "/_mock/stats")) as resp:
        assert resp.status == 200
        stats: dict[str, Any] = orjson.loads(await resp.read())
        return stats


def error_of(answer: Answer) -> dict[str, Any]:
    error: dict[str, Any] = answer.json()["error"]
    return error


# --------------------------------------------------------------------------- normal IDs


async def test_default_id_is_a_completed_dashscope_body(server: MockServer, fetch: Fetch) -> None:
    answer = await fetch(server, "resp_801bc2c4-93d9-910f-b35d-5274f5a737c1")

    assert answer.status == 200
    assert answer.headers["Content-Type"] == "application/json"
    body = answer.json()
    assert body["id"] == "resp_801bc2c4-93d9-910f-b35d-5274f5a737c1"
    assert body["object"] == "response"
    assert body["status"] == "completed"
    assert body["model"].startswith("qwen")
    assert isinstance(body["created_at"], int)
    assert body["completed_at"] > body["created_at"]
    assert body["output"]
    usage = body["usage"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert "cached_tokens" in usage["input_tokens_details"]
    assert "reasoning_tokens" in usage["output_tokens_details"]
    assert usage["x_details"][0]["x_billing_type"] == "response_api"
    assert usage["x_details"][0]["total_tokens"] == usage["total_tokens"]
    assert answer.body == body_for("resp_801bc2c4-93d9-910f-b35d-5274f5a737c1")


async def test_served_bodies_equal_body_for_and_are_stable(server: MockServer, fetch: Fetch) -> None:
    for response_id in ("resp_a1_x", "gen-1784286312-3R0SU4Mb8ucOpEJ79d2o", "resp_ok3_y"):
        first = await fetch(server, response_id)
        second = await fetch(server, response_id)
        assert first.body == second.body == body_for(response_id)
        assert first.json()["id"] == response_id


async def test_seed_changes_generated_bodies(make_server: Factory, fetch: Fetch) -> None:
    seeded = await make_server(seed=7)

    answer = await fetch(seeded, "resp_seeded_1")

    assert answer.body == body_for("resp_seeded_1", seed=7)
    assert answer.body != body_for("resp_seeded_1", seed=0)


def test_rotation_covers_every_documented_item_type() -> None:
    seen: set[str] = set()
    models: set[str] = set()
    for number in range(300):
        body = orjson.loads(body_for(f"resp_{number:08x}-rotation"))
        models.add(body["model"])
        types = {item["type"] for item in body["output"]}
        seen |= types
        tool_types = types - {"message", "reasoning", "function_call"}
        assert ("x_tools" in body["usage"]) == bool(tool_types), types
    assert seen == DOCUMENTED_ITEM_TYPES
    assert len(models) > 1


def test_generated_bodies_contain_non_ascii_text() -> None:
    texts = [
        part["text"]
        for number in range(100)
        for item in orjson.loads(body_for(f"resp_{number}-text"))["output"]
        if item["type"] == "message"
        for part in item["content"]
    ]
    assert any(any("\u4e00" <= char <= "\u9fff" for char in text) for text in texts)
    assert any(any(ord(char) > 0xFFFF for char in text) for text in texts)


async def test_kitchensink_has_every_item_type_and_unknown_fields(server: MockServer, fetch: Fetch) -> None:
    answer = await fetch(server, "resp_kitchensink_1")

    assert answer.status == 200
    body = answer.json()
    items = {item["type"]: item for item in body["output"]}
    assert set(items) == DOCUMENTED_ITEM_TYPES | {"hologram_call"}
    assert items["hologram_call"]["projection"]["depth"] == 64
    assert "x_hologram_session" in body
    assert body["usage"]["x_tools"]["web_search"] == {"count": 1}

    action = items["web_search_call"]["action"]
    assert action["type"] == "search" and action["query"] and action["sources"]
    annotations = items["message"]["content"][0]["annotations"]
    assert {annotation["type"] for annotation in annotations} == {"url_citation"}
    assert items["code_interpreter_call"]["outputs"][0]["type"] == "logs"
    assert items["web_extractor_call"]["urls"] and items["web_extractor_call"]["goal"]
    for name in ("web_search_image_call", "image_search_call"):
        images = orjson.loads(items[name]["output"])  # a JSON string, as documented
        assert {"title", "url", "index"} <= set(images[0])
        orjson.loads(items[name]["arguments"])
    assert items["mcp_call"]["server_label"] == "amap-maps"
    orjson.loads(items["mcp_call"]["output"])
    result = items["file_search_call"]["results"][0]
    assert {"file_id", "filename", "score", "text"} <= set(result)
    assert items["file_search_call"]["queries"]
    assert items["function_call"]["call_id"]
    assert items["reasoning"]["summary"][0]["type"] == "summary_text"


@pytest.mark.parametrize(
    "response_id",
    [
        "resp:abc.def",
        "92471b7c-94ad-452f-a3f5-c29aa74a95e1",
        "gen-1784286313-o0LDhOFaHL3xExqbXInR",
        "resp_abc.def:ghi_us-east-1",
        "resp_nosuchscenario3_x",
    ],
)
async def test_quoted_and_foreign_ids_are_normal_responses(
    server: MockServer, session: aiohttp.ClientSession, response_id: str
) -> None:
    url = response_url(server, response_id)
    assert "%3A" in str(url) or ":" not in response_id

    async with session.get(url) as resp:
        body = await resp.read()

    assert resp.status == 200
    assert orjson.loads(body)["id"] == response_id
    assert body == body_for(response_id)
    assert (await get_stats(session, server))["requests_by_id"] == {response_id: 1}


# --------------------------------------------------------------------------- scenarios


async def test_notfound_is_always_404(server: MockServer, fetch: Fetch) -> None:
    for _ in range(3):
        answer = await fetch(server, "resp_notfound_a")
        assert answer.status == 404
        assert answer.json() == {
            "error": {
                "message": "Response with id 'resp_notfound_a' not found.",
                "type": "InvalidParameter",
            }
        }


async def test_notfound_n_is_a_transient_404(server: MockServer, fetch: Fetch) -> None:
    statuses = [(await fetch(server, "resp_notfound2_a")).status for _ in range(4)]
    assert statuses == [404, 404, 200, 200]


async def test_flaky_n_fails_with_503_then_succeeds(server: MockServer, fetch: Fetch) -> None:
    first = await fetch(server, "resp_flaky2_a")
    second = await fetch(server, "resp_flaky2_a")
    third = await fetch(server, "resp_flaky2_a")

    assert (first.status, second.status, third.status) == (503, 503, 200)
    assert error_of(first)["message"]
    assert third.body == body_for("resp_flaky2_a", 3)


async def test_ratelimit_n_sends_retry_after(make_server: Factory, fetch: Fetch) -> None:
    server = await make_server(retry_after_s=0.2)

    limited = await fetch(server, "resp_ratelimit1_a")
    after = await fetch(server, "resp_ratelimit1_a")

    assert limited.status == 429
    assert limited.headers["retry-after"] == "0.2"
    assert limited.headers["retry-after-ms"] == "200"
    assert limited.json() == {
        "error": {
            "code": "Throttling.RateQuota",
            "message": "Requests rate limit exceeded, please try again later.",
            "type": "Throttling.RateQuota",
        }
    }
    assert after.status == 200


async def test_ratelimit_whole_seconds(server: MockServer, fetch: Fetch) -> None:
    limited = await fetch(server, "resp_ratelimit_a")
    assert (limited.headers["retry-after"], limited.headers["retry-after-ms"]) == ("1", "1000")
    assert (await fetch(server, "resp_ratelimit_a")).status == 429


async def test_quota_n_is_openai_insufficient_quota(server: MockServer, fetch: Fetch) -> None:
    quota = await fetch(server, "resp_quota1_a")

    assert quota.status == 429
    error = error_of(quota)
    assert error["type"] == error["code"] == "insufficient_quota"
    assert error["message"].startswith("You exceeded your current quota")
    assert (await fetch(server, "resp_quota1_a")).status == 200


async def test_trunc_is_always_half_a_body(server: MockServer, fetch: Fetch) -> None:
    for number in (1, 2):
        answer = await fetch(server, "resp_trunc_a")
        assert answer.status == 200
        assert answer.body == body_for("resp_trunc_a", number)
        assert b'"id":"resp_trunc_a"' in answer.body
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(answer.body)


async def test_trunc_n_is_truncated_then_whole(server: MockServer, fetch: Fetch) -> None:
    cut = await fetch(server, "resp_trunc1_a")
    whole = await fetch(server, "resp_trunc1_a")

    assert whole.body == body_for("resp_trunc1_a", 2)
    assert whole.json()["id"] == "resp_trunc1_a"
    assert cut.body == whole.body[: len(whole.body) // 2]
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(cut.body)


async def test_garbage_is_html(server: MockServer, fetch: Fetch) -> None:
    answer = await fetch(server, "resp_garbage_a")

    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("text/html")
    assert answer.body == b"<html>502 Bad Gateway</html>" == body_for("resp_garbage_a")


async def test_mismatch_has_another_id(server: MockServer, fetch: Fetch) -> None:
    answer = await fetch(server, "resp_mismatch_a")

    body = answer.json()
    assert answer.status == 200
    assert body["object"] == "response"
    assert body["id"] != "resp_mismatch_a"
    assert body["id"].startswith("resp_")


async def test_pending_n_moves_through_the_lifecycle(server: MockServer, fetch: Fetch) -> None:
    answers = [await fetch(server, "resp_pending3_a") for _ in range(5)]

    bodies = [answer.json() for answer in answers]
    assert [body["status"] for body in bodies] == [
        "queued", "in_progress", "in_progress", "completed", "completed",
    ]  # fmt: skip
    assert bodies[0]["output"] == []
    assert bodies[1]["output"], "in_progress carries partial output"
    for body in bodies[:3]:
        assert body["completed_at"] is None
        assert body["usage"] is None
        assert body["id"] == "resp_pending3_a"
    assert isinstance(bodies[3]["completed_at"], int)
    assert bodies[3]["usage"]["total_tokens"] > 0
    for number, answer in enumerate(answers, start=1):
        assert answer.body == body_for("resp_pending3_a", number)


async def test_pending_without_n_never_completes(server: MockServer, fetch: Fetch) -> None:
    statuses = [(await fetch(server, "resp_pending_a")).json()["status"] for _ in range(3)]
    assert statuses == ["queued", "in_progress", "in_progress"]


async def test_big_is_about_four_megabytes(server: MockServer, fetch: Fetch) -> None:
    answer = await fetch(server, "resp_big_a")

    assert answer.status == 200
    assert 3_500_000 < len(answer.body) < 5_000_000
    text = answer.json()["output"][0]["content"][0]["text"]
    assert "大型响应测试" in text
    assert answer.body == body_for("resp_big_a")


async def test_nul_carries_control_characters(server: MockServer, fetch: Fetch) -> None:
    answer = await fetch(server, "resp_nul_a")

    assert b"\\u0000" in answer.body
    assert b"\x00" not in answer.body  # escaped, as JSON requires
    text = answer.json()["output"][0]["content"][0]["text"]
    assert "\x00" in text
    assert "\x1b" in text and "\x7f" in text


async def test_unicode_is_heavy_non_ascii(server: MockServer, fetch: Fetch) -> None:
    answer = await fetch(server, "resp_unicode_a")

    texts = [
        part["text"]
        for item in answer.json()["output"]
        if item["type"] == "message"
        for part in item["content"]
    ]
    text = "".join(texts)
    assert any(ord(char) > 0xFFFF for char in text), "astral-plane characters"
    assert any("\u0590" <= char <= "\u06ff" for char in text), "Hebrew or Arabic (RTL)"
    assert "你好" in text and "\u200d" in text


async def test_hang_delays_the_answer(make_server: Factory, fetch: Fetch) -> None:
    server = await make_server(hang_s=0.3)

    with pytest.raises(TimeoutError):
        await fetch(server, "resp_hang1_a", timeout=0.1)
    started = time.monotonic()
    after = await fetch(server, "resp_hang1_a")

    assert after.status == 200
    assert time.monotonic() - started < 0.25
    started = time.monotonic()
    hung = await fetch(server, "resp_hang_b")
    assert hung.status == 200
    assert time.monotonic() - started >= 0.28


async def test_abandoned_hang_leaves_nothing_in_flight(
    make_server: Factory, fetch: Fetch, session: aiohttp.ClientSession
) -> None:
    server = await make_server(hang_s=30)

    with pytest.raises(TimeoutError):
        await fetch(server, "resp_hang_a", timeout=0.1)
    for _ in range(50):
        if (await get_stats(session, server))["in_flight"] == 0:
            break
        await asyncio.sleep(0.01)
    assert (await get_stats(session, server))["in_flight"] == 0


async def test_close_releases_a_request_still_hanging(session: aiohttp.ClientSession) -> None:
    server = await start_mock_server(MockConfig(hang_s=30))
    request = asyncio.ensure_future(session.get(response_url(server, "resp_hang_a")))
    while server.stats.in_flight == 0:  # noqa: ASYNC110 - polls the server state
        await asyncio.sleep(0.01)

    started = time.monotonic()
    await server.close()

    assert time.monotonic() - started < 2
    try:
        resp = await request
        resp.release()
    except aiohttp.ClientError:
        pass  # a dropped connection is fine too: the point is close() did not wait 30 s


async def test_reset_drops_the_connection(
    server: MockServer, fetch: Fetch, session: aiohttp.ClientSession
) -> None:
    # aiohttp retries an idempotent request once after a disconnect: reset2 defeats it.
    with pytest.raises(aiohttp.ClientConnectionError):
        await fetch(server, "resp_reset2_a")
    answer = await fetch(server, "resp_reset2_a")

    assert answer.status == 200
    assert answer.body == body_for("resp_reset2_a", 3)
    stats = await get_stats(session, server)
    assert stats["requests_by_id"]["resp_reset2_a"] == 3
    assert stats["dropped_total"] == 2
    assert stats["status_counts"] == {"200": 1}


async def test_reset_sends_no_http_bytes(server: MockServer) -> None:
    url = URL(server.base_url)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    writer.write(f"GET {url.path}/responses/resp_reset_raw HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    try:
        received = await asyncio.wait_for(reader.read(), 2)
    except ConnectionResetError:
        received = b""
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    assert received == b""


@pytest.mark.parametrize(
    ("scenario", "status", "error_type", "code"),
    [
        ("servererror", 500, "InternalError", "InternalError"),
        ("badrequest", 400, "InvalidParameter", "InvalidParameter"),
        ("unauthorized", 401, "invalid_request_error", "invalid_api_key"),
        ("forbidden", 403, "AccessDenied.Unpurchased", "AccessDenied.Unpurchased"),
        ("arrearage", 400, "Arrearage", "Arrearage"),
    ],
)
async def test_permanent_error_scenarios(
    server: MockServer, fetch: Fetch, scenario: str, status: int, error_type: str, code: str
) -> None:
    for _ in range(2):
        answer = await fetch(server, f"resp_{scenario}_a")
        assert answer.status == status
        error = error_of(answer)
        assert (error["type"], error["code"]) == (error_type, code)
        assert "not found" not in error["message"]


async def test_arrearage_body_is_dashscopes(server: MockServer, fetch: Fetch) -> None:
    assert (await fetch(server, "resp_arrearage_a")).json() == {
        "error": {
            "code": "Arrearage",
            "message": "Access denied, please make sure your account is in good standing.",
            "type": "Arrearage",
        }
    }


# --------------------------------------------------------------------------- API key


async def test_api_key_is_enforced(
    make_server: Factory, fetch: Fetch, session: aiohttp.ClientSession
) -> None:
    server = await make_server(api_key="sk-right")

    missing = await fetch(server, "resp_a_1")
    wrong = await fetch(server, "resp_a_1", headers={"Authorization": "Bearer sk-wrong-secret"})
    right = await fetch(server, "resp_a_1", headers={"Authorization": "Bearer sk-right"})

    expected = {
        "error": {
            "message": "Incorrect API key provided.",
            "type": "invalid_request_error",
            "code": "invalid_api_key",
        }
    }
    assert (missing.status, missing.json()) == (401, expected)
    assert (wrong.status, wrong.json()) == (401, expected)
    assert b"sk-wrong-secret" not in wrong.body
    assert right.status == 200
    stats = await get_stats(session, server)  # no key needed
    assert stats["status_counts"] == {"401": 2, "200": 1}
    async with session.post(mock_url(server, "/_mock/reset")) as resp:
        assert resp.status == 200


# --------------------------------------------------------------------------- bodies_dir


async def test_bodies_dir_serves_corpus_files_byte_exact(
    make_server: Factory, fetch: Fetch, tmp_path: Path
) -> None:
    bodies_dir = tmp_path / "bodies"
    bodies_dir.mkdir()
    originals = {}
    for name in CORPUS_FILES:
        raw = (CORPUS / name).read_bytes()
        (bodies_dir / name).write_bytes(raw)
        originals[orjson.loads(raw)["id"]] = raw
    (bodies_dir / "broken.json").write_bytes(b"{not json")
    server = await make_server(bodies_dir=bodies_dir)

    for response_id, raw in originals.items():
        answer = await fetch(server, response_id)
        assert answer.status == 200
        assert answer.body == raw
    generated = await fetch(server, "resp_not_on_disk")
    assert generated.status == 200
    assert generated.body == body_for("resp_not_on_disk")


async def test_bodies_dir_reads_the_corpus_in_place(make_server: Factory, fetch: Fetch) -> None:
    server = await make_server(bodies_dir=CORPUS, bodies_only=True)
    raw = (CORPUS / CORPUS_FILES[0]).read_bytes()

    answer = await fetch(server, orjson.loads(raw)["id"])
    unknown = await fetch(server, "resp_not_on_disk")

    assert answer.body == raw
    assert unknown.status == 404
    assert error_of(unknown)["message"] == "Response with id 'resp_not_on_disk' not found."


# --------------------------------------------------------------------------- stats


async def test_stats_count_requests_and_concurrency(
    make_server: Factory, session: aiohttp.ClientSession
) -> None:
    server = await make_server(latency_ms=150)
    bound = asyncio.Semaphore(3)

    async def bounded(response_id: str) -> int:
        async with bound, session.get(response_url(server, response_id)) as resp:
            await resp.read()
            return resp.status

    statuses = await asyncio.gather(*(bounded(f"resp_c{n % 4}_x") for n in range(9)))

    assert statuses == [200] * 9
    stats = await get_stats(session, server)
    assert stats["requests_total"] == 9
    assert stats["requests_by_id"] == {"resp_c0_x": 3, "resp_c1_x": 2, "resp_c2_x": 2,
                                       "resp_c3_x": 2}  # fmt: skip
    assert stats["status_counts"] == {"200": 9}
    assert stats["max_in_flight"] == 3
    assert stats["in_flight"] == 0
    assert server.stats.max_in_flight == 3


async def test_max_in_flight_sees_unbounded_concurrency(
    make_server: Factory, session: aiohttp.ClientSession
) -> None:
    server = await make_server(latency_ms=150, jitter_ms=20)

    async def one(response_id: str) -> None:
        async with session.get(response_url(server, response_id)) as resp:
            await resp.read()

    started = time.monotonic()
    await asyncio.gather(*(one(f"resp_u{n}_x") for n in range(8)))

    assert time.monotonic() - started >= 0.12
    assert (await get_stats(session, server))["max_in_flight"] == 8


async def test_reset_clears_stats_and_fetch_counters(
    server: MockServer, fetch: Fetch, session: aiohttp.ClientSession
) -> None:
    assert (await fetch(server, "resp_flaky1_a")).status == 503
    assert (await fetch(server, "resp_flaky1_a")).status == 200

    async with session.post(mock_url(server, "/_mock/reset")) as resp:
        assert resp.status == 200
    assert await get_stats(session, server) == {
        "requests_total": 0,
        "requests_by_id": {},
        "status_counts": {},
        "in_flight": 0,
        "max_in_flight": 0,
        "dropped_total": 0,
        "input_items_total": 0,
        "input_items_by_id": {},
        "include_by_id": {},
        "arrivals": [],
    }
    assert (await fetch(server, "resp_flaky1_a")).status == 503


# --------------------------------------------------------------------------- fail_rate


async def test_fail_rate_one_fails_every_normal_fetch(make_server: Factory, fetch: Fetch) -> None:
    server = await make_server(fail_rate=1.0, retry_after_s=0.5)

    answers = [await fetch(server, f"resp_storm{n}-x") for n in range(30)]

    assert {answer.status for answer in answers} == {429, 500, 503}
    for answer in answers:
        assert error_of(answer)["message"]
        if answer.status == 429:
            assert answer.headers["retry-after-ms"] == "500"
    assert (await fetch(server, "resp_kitchensink_a")).status == 200  # scenarios unaffected


async def test_fail_rate_is_seeded_and_proportional(make_server: Factory, fetch: Fetch) -> None:
    first = await make_server(fail_rate=0.3, seed=5)
    second = await make_server(fail_rate=0.3, seed=5)
    ids = [f"resp_{n}-storm" for n in range(120)]

    statuses_first = [(await fetch(first, response_id)).status for response_id in ids]
    statuses_second = [(await fetch(second, response_id)).status for response_id in ids]

    assert statuses_first == statuses_second
    failures = sum(status != 200 for status in statuses_first)
    assert 15 <= failures <= 60


# --------------------------------------------------------------------------- app plumbing


async def test_custom_prefix(make_server: Factory, fetch: Fetch) -> None:
    server = await make_server(prefix="/compatible-mode/v1/")

    assert server.base_url.endswith("/compatible-mode/v1")
    assert (await fetch(server, "resp_prefix_a")).status == 200


async def test_latency_is_added(make_server: Factory, fetch: Fetch) -> None:
    server = await make_server(latency_ms=120)

    started = time.monotonic()
    await fetch(server, "resp_slow_a")

    assert time.monotonic() - started >= 0.11


async def test_serve_forever_reports_ready_and_stops_on_cancel(
    session: aiohttp.ClientSession,
) -> None:
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve_forever(MockConfig(), "127.0.0.1", 0, ready.set_result))
    base_url = await asyncio.wait_for(ready, 5)

    async with session.get(f"{base_url}/responses/resp_forever_a") as resp:
        assert resp.status == 200
        assert await resp.read() == body_for("resp_forever_a")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(aiohttp.ClientConnectionError):
        async with session.get(f"{base_url}/responses/resp_forever_a") as resp:
            pass


def test_build_app_routes() -> None:
    app = build_app(MockConfig(prefix="/v1"))
    paths = {resource.canonical for resource in app.router.resources()}
    assert paths == {
        "/v1/responses/{response_id}",
        "/v1/responses/{response_id}/input_items",
        "/_mock/stats",
        "/_mock/reset",
    }


async def test_input_items_paginate_like_the_api() -> None:
    from archiver.mockapi import input_items_for

    rid = "resp_manyinputs_p1"
    async with await start_mock_server() as mock, aiohttp.ClientSession() as session:
        url = f"{mock.base_url}/responses/{rid}/input_items"
        seen: list[str] = []
        after = None
        pages = 0
        while True:
            params = {"order": "asc", "limit": "100", **({"after": after} if after else {})}
            async with session.get(url, params=params) as resp:
                assert resp.status == 200
                page = await resp.json()
            pages += 1
            assert page["object"] == "list"
            seen += [item["id"] for item in page["data"]]
            assert page["last_id"] == page["data"][-1]["id"]
            if not page["has_more"]:
                break
            after = page["last_id"]
        assert pages == 3
        assert seen == [item["id"] for item in input_items_for(rid)]
        # Default order is newest first, as on OpenAI.
        async with session.get(url) as resp:
            first = (await resp.json())["data"][0]["id"]
        assert first == input_items_for(rid)[-1]["id"]
        async with session.get(url, params={"limit": "0"}) as resp:
            assert resp.status == 400
        stats = mock.stats.as_dict()
        assert stats["input_items_by_id"][rid] == 3 + 2
        assert stats["requests_total"] == 0
