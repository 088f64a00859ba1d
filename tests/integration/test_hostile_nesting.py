"""A hostile server against the 512-level nesting limit (``archiver.jsontext.MAX_NESTING``).

Found: the depth check's regex for JSON strings backtracked over every escaped quote of
an unterminated string, so 513 brackets, a quote and ``\\"`` repeated took quadratic time
(a 160 KB body 71 s, a 16 MiB body days) inside the fetcher. And the limit was safe
only for walkers that spend one Python frame per level: ``map_strings`` (the lone
surrogate scrub and the secret scrub) spends two, so a body 512 levels deep with a lone
surrogate escape failed its ID as "normalization failed: RecursionError", and one that
echoed the key crashed the fetcher task and stopped the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import standardwebhooks
from aiohttp import web
from sqlalchemy import text

from archiver.commands import show
from archiver.compact import compact
from archiver.db import open_database
from archiver.export import export
from archiver.ingest_http import load_ingest_secrets
from archiver.queue import QueueStore
from archiver.redaction import MASK, register_secret
from archiver.renormalize import renormalize
from archiver.worker import Worker
from tests.acceptance.conftest import base_env
from tests.integration.test_hostile_capture import serve_bodies
from tests.integration.test_hostile_numbers import response
from tests.integration.test_push_ingest import SECRET, secret_files, served
from tests.peak_rss import measured, peak_bytes

pytestmark = pytest.mark.timeout(180)

LEVELS = 511  # x's arrays: with the response object, 512 levels, the most the archiver reads


def nested(inner: bytes, levels: int = LEVELS, *, objects: bool = False) -> bytes:
    if objects:
        return b'{"k":' * levels + inner + b"}" * levels
    return b"[" * levels + inner + b"]" * levels


MANY_BRACKETS = b"[" + b"[]," * 600
"""More opening brackets than MAX_NESTING, two levels deep: the depth check runs."""


MiB = 1024 * 1024


async def run_once(sqlite_url: str, bodies: dict[str, bytes], tmp_path: Path) -> int:
    """``archiver run --once`` (inline writer) of ``bodies`` served as they are: its peak
    RSS in bytes (its own: see tests/peak_rss.py); it must exit 0 within a minute (a hang
    detector)."""
    async with open_database(sqlite_url) as engine:
        await QueueStore(engine).enqueue(list(bodies))
    env = {**base_env(), "ARCHIVER_DATABASE_URL": sqlite_url, "ARCHIVER_WRITER": "inline"}
    report = tmp_path / "peak-rss"
    async with serve_bodies(bodies) as base_url:
        command = [sys.executable, "-m", "archiver", "run", "--once", "--base-url", base_url]
        with (tmp_path / "stderr").open("wb") as stderr:
            run = subprocess.Popen(  # noqa: ASYNC220 (waited for in a thread)
                measured([*command, "--max-attempts", "1"], report),
                env=env,
                stderr=stderr,
                start_new_session=True,
            )
        try:
            code = await asyncio.wait_for(asyncio.to_thread(run.wait), 60)
        finally:
            if run.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(run.pid, signal.SIGKILL)
    assert code == 0, (tmp_path / "stderr").read_text()[-2000:]
    return peak_bytes(report)


async def test_bodies_of_quotes_are_refused_in_linear_time_and_bounded_memory(
    sqlite_url: str, tmp_path: Path
) -> None:
    """600 arrays, then an unterminated string of 1 MiB of ``\\"`` (the string regex of
    the depth check backtracked from every escaped quote: a 160 KB body took 71 s, this
    one hours), or 16 MiB of ``"`` (8 million empty strings: the regex's substitution
    held ~45 bytes per match, 750 MB). Not JSON: refused at once, within the README's
    memory bound (512 MiB at the defaults)."""
    bodies = {
        "resp_quotes": MANY_BRACKETS + b'"' + b'\\"' * (512 * 1024),
        "resp_backslash": b'{"a":' + MANY_BRACKETS + b'"' + b'\\"' * (512 * 1024) + b"\\",
        "resp_pairs": MANY_BRACKETS + b'"' * (16 * 1024 * 1024 - 4096),
        # 600 brackets inside a string, behind escaped quotes and backslashes: one level deep
        "resp_ok": response("resp_ok", b'"x":"\\"\\\\' + b"[{" * 600 + b'\\\\\\""'),
    }
    peak = await run_once(sqlite_url, bodies, tmp_path)
    assert peak < 512 * MiB, f"peak RSS {peak // MiB} MiB"
    async with open_database(sqlite_url) as engine, engine.connect() as conn:
        rows = (await conn.execute(text("SELECT id, state, last_error FROM archive_queue"))).fetchall()
    states = {rid: (state, error) for rid, state, error in rows}
    assert states["resp_ok"][0] == "archived"
    for rid in ("resp_quotes", "resp_backslash", "resp_pairs"):
        assert states[rid][0] == "failed"
        # 8 million quote pairs are refused by the string-value count before the parse
        # could say the text is not JSON (the count of text that is not JSON is a guess).
        why = "string values, more than" if rid == "resp_pairs" else "not valid JSON"
        assert why in states[rid][1], states[rid]


KEY = "Hostile5-canary/Qx8+Lm3Rt7Wz"
DEEP = {  # every body nests 512 levels, the most the archiver reads
    "resp_surrogate": response("resp_surrogate", b'"x":' + nested(b'"\\ud83d"')),
    "resp_surrogate_obj": response("resp_surrogate_obj", b'"x":' + nested(b'"\\ud83d"', objects=True)),
    "resp_big_int": response("resp_big_int", b'"x":' + nested(b"-1234567890123456789012")),
    "resp_nul": response("resp_nul", b'"x":' + nested(b'"a\\u0000b"')),
    "resp_key": response("resp_key", b'"x":' + nested(b'"' + KEY.encode() + b'"')),
    "resp_tools": response(
        "resp_tools",
        b'"tools":[{"type":"function","name":"f","parameters":' + nested(b'"\\udc00"', LEVELS - 3) + b"}]",
    ),
}


def innermost(value: Any) -> Any:
    while isinstance(value, list | dict) and value:
        (value,) = value.values() if isinstance(value, dict) else value
    return value


@pytest.mark.parametrize("writer", ["inline", "process"])
async def test_bodies_512_levels_deep_go_through_every_walker(
    writer: str, db_url: str, make_settings: Any, tmp_path: Path
) -> None:
    """Lone surrogates, NULs and an echoed key 512 levels deep are scrubbed by walkers
    that recurse; fetched, renormalized, compacted, exported and shown, each ID archived."""
    register_secret(KEY)
    async with serve_bodies(DEEP) as base_url, open_database(db_url) as engine:
        await QueueStore(engine).enqueue(list(DEEP))
        settings = make_settings(db_url, base_url, writer=writer, max_attempts=1, api_key=KEY)
        await Worker(settings, engine, once=True).run()
        async with engine.connect() as conn:
            rows = (await conn.execute(text("SELECT id, state, last_error FROM archive_queue"))).fetchall()
        assert {rid: (state, error) for rid, state, error in rows} == dict.fromkeys(DEEP, ("archived", None))
        renormalized = await renormalize(engine, everything=True, batch_size=2)
        assert (renormalized.report.rewritten, renormalized.report.failed) == (len(DEEP), 0)
        compacted = await compact(engine, batch_size=2)
        assert compacted.report.failed == 0
        for fmt in ("jsonl", "csv", "parquet"):
            await export(engine, tmp_path / fmt, fmt=fmt, full=True)
    lines = (tmp_path / "jsonl" / "responses").glob("*.jsonl")
    extra = {
        row["id"]: row["extra"] for path in lines for row in map(json.loads, path.read_bytes().splitlines())
    }
    extra = {rid: json.loads(value) if isinstance(value, str) else value for rid, value in extra.items()}
    assert innermost(extra["resp_surrogate"]) == "\ufffd"
    assert innermost(extra["resp_surrogate_obj"]) == "\ufffd"
    assert innermost(extra["resp_big_int"]) == -1234567890123456789012
    assert innermost(extra["resp_key"]) == MASK
    (table,) = [pq.read_table(path) for path in (tmp_path / "parquet" / "responses").glob("*.parquet")]
    assert table.num_rows == len(DEEP)
    for rid, raw in DEEP.items():
        assert await show(make_settings(db_url), rid) == raw


def image_search(rid: str, results: Any) -> bytes:
    """A response whose ``image_search_call`` output is ``results`` as JSON in a string."""
    output = json.dumps(results if isinstance(results, str) else json.dumps(results)).encode()
    item = b'{"type":"image_search_call","id":"isc_1","status":"completed","output":%s}' % output
    return response(rid, b'"x":1').replace(b'"output":[', b'"output":[' + item + b",")


IMAGES = {  # json.dumps writes a lone surrogate as the escape \ud83d, inside the string
    "resp_img_surrogate": image_search(
        "resp_img_surrogate", [{"title": "cut \ud83d", "url": "u", "index": 0}]
    ),
    "resp_img_nul": image_search("resp_img_nul", [{"title": "a\x00b", "url": "u", "index": 1}]),
    "resp_img_deep": image_search(
        "resp_img_deep", [{"title": "t", "url": "u", "index": 2, "x": json.loads(nested(b'"\\udc00"', 505))}]
    ),
    "resp_img_too_deep": image_search("resp_img_too_deep", "[" * 600 + "]" * 600),
}


async def test_image_search_results_with_lone_surrogates_nuls_or_deep_nesting(
    db_url: str, make_settings: Any
) -> None:
    """Found: a lone surrogate escape in an ``image_search_call`` output string (a title cut
    inside an emoji) reached the rows unscrubbed (the scrub looks at the body, where the
    escape is still text), and the ID failed "cannot store the response:
    UnicodeEncodeError"."""
    async with serve_bodies(IMAGES) as base_url, open_database(db_url) as engine:
        await QueueStore(engine).enqueue(list(IMAGES))
        await Worker(make_settings(db_url, base_url, max_attempts=1), engine, once=True).run()
        async with engine.connect() as conn:
            rows = (await conn.execute(text("SELECT id, state, last_error FROM archive_queue"))).fetchall()
            assert {rid: (state, error) for rid, state, error in rows} == dict.fromkeys(
                IMAGES, ("archived", None)
            )
            titles = dict(
                (await conn.execute(text("SELECT response_id, title FROM image_search_results"))).fetchall()
            )
            too_deep = "response_id = 'resp_img_too_deep' AND type = 'image_search_call'"
            output = (
                await conn.execute(text(f"SELECT output FROM output_items WHERE {too_deep}"))
            ).scalar_one()
        nul = "a\ufffdb" if engine.dialect.name == "postgresql" else "a\x00b"  # PostgreSQL text holds no NUL
        assert titles == {"resp_img_surrogate": "cut \ufffd", "resp_img_nul": nul, "resp_img_deep": "t"}
        assert output == "[" * 600 + "]" * 600  # not read: deeper than the archiver reads
        renormalized = await renormalize(engine, everything=True, batch_size=2)
        assert (renormalized.report.rewritten, renormalized.report.failed) == (len(IMAGES), 0)
    for rid, raw in IMAGES.items():
        assert await show(make_settings(db_url), rid) == raw


ITEMS_PAGE = (  # the page is 3 levels, the item's content 2 more: 512 in all
    b'{"object":"list","data":[{"type":"message","role":"user","id":"msg_1","content":[{"type":"input_text",'
    b'"text":"hi","x":' + nested(b'"\\ud83d"', 506, objects=True) + b'}]}],"has_more":false,'
    b'"first_id":"msg_1","last_id":"msg_1","x_deep":' + nested(b"1", 510) + b"}"
)


@pytest.mark.parametrize("writer", ["inline", "process"])
async def test_an_input_items_page_512_levels_deep_with_a_lone_surrogate(
    writer: str, db_url: str, make_settings: Any
) -> None:
    """Found: the page's lone surrogate scrub ran out of stack in the fetcher, and the
    RecursionError crashed it (``Worker.run`` raised)."""
    bodies = {"resp_items_deep": response("resp_items_deep", b'"x":1')}

    async def page(_request: web.Request) -> web.Response:
        return web.Response(body=ITEMS_PAGE, content_type="application/json")

    routes = {"/v1/responses/{rid}/input_items": page}
    async with serve_bodies(bodies, routes) as base_url, open_database(db_url) as engine:
        await QueueStore(engine).enqueue(list(bodies))
        settings = make_settings(db_url, base_url, writer=writer, max_attempts=1, with_input_items=True)
        await Worker(settings, engine, once=True).run()
        async with engine.connect() as conn:
            state = (await conn.execute(text("SELECT state FROM archive_queue"))).scalar_one()
            items = (await conn.execute(text("SELECT count(*) FROM input_item_contents"))).scalar_one()
    assert (state, items) == ("archived", 1)
    assert await show(make_settings(db_url), "resp_items_deep") == bodies["resp_items_deep"]


async def test_a_body_of_millions_of_empty_arrays_stays_within_the_memory_bound(
    sqlite_url: str, tmp_path: Path
) -> None:
    """16 MiB of ``[],`` is valid JSON of 5.6 million arrays: parsed, ~35 times its size
    (README: memory bounded by the settings, 512 MiB at the defaults). Found: it peaked at
    586 MiB. A body may hold one array or object per 8 bytes (jsontext.max_containers):
    this one fails its ID, before any parse, with a reason that says so."""
    body = response("resp_expands", b'"x":[' + b"[]," * ((16 * MiB - 4096) // 3) + b"0]")
    peak = await run_once(sqlite_url, {"resp_expands": body}, tmp_path)
    async with open_database(sqlite_url) as engine, engine.connect() as conn:
        state, error = (await conn.execute(text("SELECT state, last_error FROM archive_queue"))).one()
    print(f"16 MiB of empty arrays: {state} ({error}), peak RSS {peak // MiB} MiB")
    assert peak < 512 * MiB, f"peak RSS {peak // MiB} MiB ({state})"
    assert (
        state == "failed"
        and "body holds 5,591,049 arrays and objects, more than the 2,096,662 (one per 8 bytes)" in error
    ), error


async def test_the_push_endpoints_answer_deeply_nested_json_without_a_500(
    db_url: str, tmp_path: Path
) -> None:
    """Found: ``POST /v1/enqueue`` with a JSON array holding an element nested past
    orjson's writer (255 levels) failed the whole request with a 500 ("Recursion limit
    reached" writing the element back to show it); a signed webhook whose ``type`` is an
    array was a 500 too (looked up in a set: unhashable), and nested 1,000 levels its
    repr, to say what was ignored, ran out of stack."""
    secrets = load_ingest_secrets(secret_files(tmp_path))
    deep = nested(b'"resp_x"', 300).decode()
    async with served(db_url, secrets) as s:
        status, answer = await s.enqueue(f'["resp_a", {deep}, {{"id": "resp_b", "x": {deep}}}]'.encode())
        assert status == 200, answer
        assert (answer["queued"], answer["rejected"]) == (2, 1), answer
        assert answer["rejected_lines"][0]["line"] == 2
        body = '{"id":"evt_1","type":' + nested(b'"t"', 999).decode() + ',"data":{"id":"resp_c"}}'
        msg_id, at = "msg_deep", datetime.now(UTC)
        signature = standardwebhooks.Webhook(SECRET).sign(msg_id, at, body)
        status, answer = await s.post(
            "/webhooks/default",
            body.encode(),
            **{
                "webhook-id": msg_id,
                "webhook-timestamp": str(int(at.timestamp())),
                "webhook-signature": signature,
            },
        )
        assert (status, answer) == (200, {"ignored": True, "type": "(array)"})
        assert set(await s.rows()) == {"resp_a", "resp_b"}
