"""A valid body that echoes the key broken over two lines: only ``raw`` keeps it.

A model (or a server's template) that wraps its text can put a line break anywhere in
the key; one break in the middle leaves two pieces of half the key each, which neither
the search for echoed keys (it looked for over half of the key) nor the masking of a
cut-off copy recognizes, so the derived rows showed the key whole, a newline inside.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import select

from archiver.commands import show
from archiver.db import open_database
from archiver.queue import QueueStore
from archiver.redaction import register_secret
from archiver.schema import metadata
from archiver.worker import Worker
from tests.canaries import leaks
from tests.integration.test_hostile_capture import serve_bodies

pytestmark = pytest.mark.timeout(60)

KEY = "Pw4-canary/Hq8+zN2vXc7Lr"
"""No known key shape; 24 characters, so a break in the middle leaves 12 and 12."""


def wrapped(rid: str, text: str) -> bytes:
    message = {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}
    body = {"id": rid, "object": "response", "status": "completed", "model": "m", "output": [message]}
    return json.dumps(body).encode()


BODIES = {
    "resp_wrap_lf": wrapped("resp_wrap_lf", f"your key:\n{KEY[:12]}\n{KEY[12:]}\n"),
    "resp_wrap_crlf": wrapped("resp_wrap_crlf", f"key {KEY[:12]}\r\n    {KEY[12:]} ok"),
}


@pytest.mark.parametrize("writer", ["inline", "process"])
async def test_a_key_wrapped_over_two_lines_stays_only_in_raw(
    db_url: str, make_settings: Any, writer: str
) -> None:
    register_secret(KEY)
    async with serve_bodies(BODIES) as base_url, open_database(db_url) as engine:
        await QueueStore(engine).enqueue(list(BODIES))
        await Worker(make_settings(db_url, base_url, api_key=KEY, writer=writer), engine, once=True).run()
        values: list[str] = []
        async with engine.connect() as conn:
            for table in metadata.sorted_tables:
                for row in (await conn.execute(select(table))).mappings():
                    values += [
                        json.dumps(value, default=str, ensure_ascii=False)
                        for column, value in row.items()
                        if (table.name, column) != ("responses", "raw")
                        and not isinstance(value, bytes | memoryview)
                    ]
        text = "\n".join(values)
        assert "***" in text
        squeezed = "".join(text.replace("\\n", " ").replace("\\r", " ").split())
        assert leaks(squeezed.encode(), KEY) == []
    for rid, raw in BODIES.items():
        assert await show(make_settings(db_url), rid) == raw
