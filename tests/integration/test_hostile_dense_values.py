"""Hostile: valid bodies as dense in objects and small values as the limits allow.

The container limit (``jsontext.max_containers``: one array or object per 8 bytes) was
measured with 16 MiB of ``[],``. An object takes about four times a list's memory, and
strings are not containers at all: does a valid 16 MiB body at the limit stay within
README's memory bound (512 MiB at the defaults) through ``archiver run --once``?
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from archiver.db import open_database
from tests.integration.test_hostile_nesting import MiB, response, run_once

pytestmark = pytest.mark.timeout(120)

FILL = 16 * MiB - 4096

DENSE = {
    # one object per 8 bytes: 614 MiB before objects counted as two
    "one-key objects": (b'"x":[' + b'{"a":0},' * (FILL // 8) + b"0]", "failed"),
    # one per 16 bytes: within the bound alone (365 MiB), but three at once took 'run --once'
    # to 493 MiB (--writer process) and 608 MiB (inline): an object weighs three arrays in
    # jsontext.parse_weight, and all kinds together at most one per 5 1/3 bytes
    "one-key objects, one per 16 bytes": (b'"x":[' + b'{"a":0},        ' * (FILL // 16) + b"0]", "failed"),
    # 4 million strings (no containers): 469 MiB alone, 635 MiB three at once; now refused
    "one-character strings": (b'"x":[' + b'"a",' * (FILL // 4) + b"0]", "failed"),
}


@pytest.mark.parametrize("kind", list(DENSE))
async def test_a_body_dense_in_objects_or_strings_stays_within_the_memory_bound(
    kind: str, sqlite_url: str, tmp_path: Path
) -> None:
    body, expected = DENSE[kind]
    peak = await run_once(sqlite_url, {"resp_dense": response("resp_dense", body)}, tmp_path)
    async with open_database(sqlite_url) as engine, engine.connect() as conn:
        state, error = (await conn.execute(text("SELECT state, last_error FROM archive_queue"))).one()
    print(f"{kind}: {state} ({error}), peak RSS {peak // MiB} MiB")
    assert peak < 512 * MiB, f"peak RSS {peak // MiB} MiB ({state})"
    assert state == expected, error
    if state == "failed":
        assert "more than the 2,096,661 (one per 8 bytes)" in error or "(one per 5 bytes)" in error, error


def _logprob(token: str) -> dict[str, object]:
    return {"token": token, "logprob": -0.5, "bytes": list(token.encode())}


def test_the_densest_real_bodies_are_read() -> None:
    """The control, at the tight end of real bodies: 4 MiB of Responses logprobs with
    one-character tokens and 20 top_logprobs each (an object and an array per ~40 bytes),
    and an mcp_list_tools of tools whose schemas hold a property per ~22 bytes."""
    import orjson

    from archiver.jsontext import loads

    entry = {**_logprob("a"), "top_logprobs": [_logprob(chr(97 + i)) for i in range(20)]}
    logprobs = [entry] * (4 * MiB // len(orjson.dumps(entry)))
    content = {"type": "output_text", "text": "a" * len(logprobs), "annotations": [], "logprobs": logprobs}
    body = orjson.dumps({"id": "resp_lp", "output": [{"type": "message", "content": [content]}]})
    assert len(loads(body)["output"][0]["content"][0]["logprobs"]) == len(logprobs)
    properties = {f"p{i}": {"type": "string"} for i in range(200)}
    tool = {"name": "t", "input_schema": {"type": "object", "properties": properties}}
    listing = {"type": "mcp_list_tools", "server_label": "s", "tools": [tool] * 1000}
    body = orjson.dumps({"id": "resp_mcp", "output": [listing]})
    assert len(body) > 4 * MiB
    assert len(loads(body)["output"][0]["tools"]) == 1000
