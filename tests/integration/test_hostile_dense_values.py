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
    # one per 16 bytes: read, and within the bound
    "one-key objects, one per 16 bytes": (b'"x":[' + b'{"a":0},        ' * (FILL // 16) + b"0]", "archived"),
    # 4 million strings (no containers): 469 MiB
    "one-character strings": (b'"x":[' + b'"a",' * (FILL // 4) + b"0]", "archived"),
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
        assert "arrays and objects, more than the 2,096,640 (one per 8 bytes)" in error, error
