"""A provider that echoes the API key inside valid 200 bodies: only ``raw`` keeps it.

A hostile server answers valid Response bodies (matching ID, ``completed``) that carry the
Bearer key it received in ``model``, ``metadata`` (values and names), output text, an
annotation, a function call's arguments, a reasoning summary, input items and the
input-item list's own fields: as it is, URL-quoted, in base64, cut off before ``...``,
and JSON-escaped so that no byte of the body spells it (``\\uXXXX`` for every character,
``\\/``). After a run (both writer modes, SQLite and PostgreSQL) ``raw`` is the server's
bytes, and no other value of any table, and no exported file in any format (``raw``
aside), holds the key in any form or any 8 characters of it in a row.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from aiohttp import web
from sqlalchemy import select

from archiver.db import open_database
from archiver.export import FORMATS, export
from archiver.queue import QueueStore
from archiver.redaction import register_secret
from archiver.schema import archive_dictionaries, metadata
from archiver.store import ArchiveStore
from archiver.worker import Worker
from tests.canaries import leaks as canary_leaks
from tests.recording import record_writes

pytestmark = pytest.mark.timeout(120)

KEY = "Zq9-canary/7Hk2+pW4xLm8eRt5"
"""No known key shape (no ``sk-`` etc.): only its registration can mask it."""
STYLES = ("plain", "unicode", "slash")
CLEAN = "resp_echo_clean"
RAW_COLUMNS = frozenset({"raw", "raw_encoding", "raw_codec", "raw_dict_id"})


def leaks(text: str, key: str = KEY) -> list[bytes]:
    """Every form of the key, and every run of 8 of its characters, found in ``text``."""
    return canary_leaks(text.encode(), key)


def echo_body(rid: str, key: str) -> dict[str, Any]:
    quoted = urllib.parse.quote(key, safe="")
    basic = base64.b64encode(f"user:{key}".encode()).decode()
    return {
        "id": rid,
        "object": "response",
        "created_at": 1767225600,
        "status": "completed",
        "model": f"gpt-echo-{key}",
        "instructions": f"never say {key}",
        "user": key,
        "metadata": {"note": f"key={key}", key: "as a name", "url": quoted, "basic": basic},
        "tools": [{"type": "mcp", "server_label": "crm", "headers": {"Authorization": f"Bearer {key}"}}],
        "output": [
            {
                "type": "message",
                "id": "msg_1",
                "status": "completed",
                "role": "assistant",
                "content": [
                    {
                        "type": "output_text",
                        "text": f"Your key is {key}; cut off: {key[:12]}...",
                        "annotations": [
                            {
                                "type": "url_citation",
                                "url": f"https://example.test/?key={quoted}",
                                "title": key,
                                "start_index": 0,
                                "end_index": 4,
                            }
                        ],
                    }
                ],
            },
            {
                "type": "function_call",
                "id": "fc_1",
                "call_id": f"call_{key}",
                "name": "lookup",
                "arguments": json.dumps({"api_key": key, "basic": basic}),
                "status": "completed",
            },
            {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": key}]},
        ],
        "usage": {"input_tokens": 3, "output_tokens": 5, "total_tokens": 8},
    }


def styled(value: Any, key: str, style: str) -> bytes:
    """``value`` as JSON, the key's characters escaped as ``style`` says."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if style == "unicode":  # no byte of the body spells the key
        text = text.replace(key, "".join(f"\\u{ord(c):04x}" for c in key))
    elif style == "slash":
        text = text.replace("/", "\\/")
    return text.encode()


class EchoServer:
    """Valid bodies (and input items) that echo the Bearer key; what it sent, by ID."""

    def __init__(self) -> None:
        self.sent: dict[str, bytes] = {}
        self.base_url = ""

    async def response(self, request: web.Request) -> web.Response:
        rid = request.match_info["rid"]
        key = request.headers["Authorization"].removeprefix("Bearer ")
        if rid == CLEAN or rid.startswith("resp_clean_"):
            body = styled(echo_body(rid, "no secret here at all"), key, "plain")
        else:
            body = styled(echo_body(rid, key), key, rid.rsplit("_", 1)[1])
        self.sent[rid] = body
        return web.Response(body=body, content_type="application/json")

    async def input_items(self, request: web.Request) -> web.Response:
        rid = request.match_info["rid"]
        key = request.headers["Authorization"].removeprefix("Bearer ")
        if rid == CLEAN:
            key = "nothing secret"
        item = {
            "type": "message",
            "id": "msg_in",
            "role": "user",
            "content": [{"type": "input_text", "text": f"my key is {key}"}],
        }
        page = {
            "object": "list",
            "data": [item],
            "first_id": "msg_in",
            "last_id": "msg_in",
            "has_more": False,
            "id": rid,
            "model": f"m-{key}",
            "created_at": 1767225600000,
            "note": key,
        }
        style = "plain" if rid == CLEAN else rid.rsplit("_", 1)[1]
        return web.Response(body=styled(page, key, style), content_type="application/json")


@pytest.fixture
async def echo_server() -> AsyncIterator[EchoServer]:
    server = EchoServer()
    app = web.Application()
    app.router.add_get("/v1/responses/{rid}", server.response)
    app.router.add_get("/v1/responses/{rid}/input_items", server.input_items)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.base_url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    try:
        yield server
    finally:
        await runner.cleanup()


def test_the_test_sees_every_form() -> None:
    """The checks below can fail: each styled body hides the key from a plain search but not from these."""
    for style in STYLES:
        body = styled(echo_body("resp_x", KEY), KEY, style)
        assert json.dumps(json.loads(body), ensure_ascii=False).count(KEY) >= 5
    assert KEY.encode() not in styled(echo_body("resp_x", KEY), KEY, "unicode")
    assert leaks(f"a {urllib.parse.quote(KEY, safe='')} b") and leaks(KEY[3:14])


def exported_values(path: Path, fmt: str) -> list[str]:
    """Every exported value but the raw body's columns, as text."""
    rows: list[dict[str, Any]]
    if fmt == "jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines()]
    elif fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(path.read_text())))
    else:
        rows = pq.read_table(path).to_pylist()
    return [
        json.dumps(value, default=str, ensure_ascii=False)
        for row in rows
        for name, value in row.items()
        if name not in RAW_COLUMNS
    ] + [" ".join(row) for row in rows]


@pytest.mark.parametrize("mode", ["process", "inline"])
async def test_a_key_echoed_in_valid_bodies_stays_only_in_raw(
    echo_server: EchoServer, make_settings: Any, db_url: str, mode: str, tmp_path: Path
) -> None:
    register_secret(KEY)  # as the CLI does with the configured key
    rids = [f"resp_echo_{style}" for style in STYLES]
    settings = make_settings(db_url, echo_server.base_url, api_key=KEY, writer=mode, with_input_items=True)
    async with open_database(db_url) as engine:
        await QueueStore(engine).enqueue([*rids, CLEAN])
        worker = Worker(settings, engine, once=True)
        handed = record_writes(worker)
        summary = await worker.run()
        assert summary.archived == 4
        # Only the echoing bodies leave the fast path (normalized and scrubbed before the writer).
        assert {r.job.response_id for r in handed if r.normalized is not None} == set(rids)

        store = ArchiveStore(engine)
        for rid in [*rids, CLEAN]:
            assert await store.raw_body(rid) == echo_server.sent[rid]  # byte-exact, key and all
        searched: dict[tuple[str, str], list[str]] = {}
        async with engine.connect() as conn:
            for table in metadata.sorted_tables:
                result = await conn.execute(select(table))
                for row in result.mappings():
                    for column, value in row.items():
                        if value is None or (table.name, column) == ("responses", "raw"):
                            continue
                        if isinstance(value, (bytes, memoryview)):
                            text = bytes(value).decode("utf-8", "replace")
                        else:
                            text = json.dumps(value, default=str, ensure_ascii=False)
                        searched.setdefault((table.name, column), []).append(text)
        # The search saw the derived rows (masked), input items and the list's fields.
        assert any("***" in v for v in searched[("responses", "model")])
        assert any("***" in v for v in searched[("content_parts", "text")])
        assert any("***" in v for v in searched[("input_item_contents", "item")])
        assert any("***" in v for v in searched[("input_item_lists", "model")])
        assert any("***" in v for v in searched[("tool_sets", "tools")])
        found = {where: leaks(v) for where, values in searched.items() for v in values if leaks(v)}
        assert found == {}, found

        for fmt in FORMATS:
            out = tmp_path / fmt
            await export(engine, out, fmt=fmt, full=True)  # type: ignore[arg-type]
            files = [p for p in out.rglob("*") if p.is_file() and p.suffix.lstrip(".") == fmt]
            assert any(p.parent.name == "content_parts" for p in files), files
            for path in files:
                values = exported_values(path, fmt)
                found_in_file = [v for v in values if leaks(v)]
                assert found_in_file == [], (path, found_in_file[:3])
            responses_file = next(p for p in files if p.parent.name == "responses")
            assert "***" in "".join(exported_values(responses_file, fmt))


async def test_no_dictionary_is_trained_on_a_body_that_echoes_the_key(
    echo_server: EchoServer, make_settings: Any, db_url: str
) -> None:
    """Found (hostile4, documented then): the zstd dictionaries are trained on archived
    bodies, so with many bodies echoing the key the dictionary's bytes held it, outside
    ``raw``. A body flagged ``secret_masked`` is never a training sample."""
    register_secret(KEY)
    ids = [rid for i in range(170) for rid in (f"resp_echo{i:03d}_plain", f"resp_clean_{i:03d}")]
    settings = make_settings(db_url, echo_server.base_url, api_key=KEY)
    async with open_database(db_url) as engine:
        await QueueStore(engine).enqueue(ids)
        assert (await Worker(settings, engine, once=True).run()).archived == len(ids)
        async with engine.connect() as conn:
            dictionaries = list((await conn.execute(select(archive_dictionaries.c.data))).scalars())
    assert dictionaries, "no dictionary was trained: the test saw nothing"
    for data in dictionaries:
        assert canary_leaks(bytes(data), KEY) == []
