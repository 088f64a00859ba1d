"""Integers beyond 64 bits keep every digit in the derived columns, as they do in ``raw``.

Found: orjson reads ``123456789012345678901234567890`` as the double
``1.2345678901234568e+29`` without an error, so the normalizer wrote that double into
``content_parts.extra``, ``tool_sets.tools`` and the other JSON columns, PostgreSQL's
``jsonb`` came back through the engine's orjson deserializer rounded, and the export
handed the warehouse numbers the archived body does not hold. ``raw`` was exact; the
projection of it was not.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from sqlalchemy import select, text

from archiver.commands import show
from archiver.db import open_database
from archiver.export import export
from archiver.queue import QueueStore
from archiver.renormalize import renormalize
from archiver.schema import content_parts, output_items, responses, tool_sets
from archiver.worker import Worker
from tests.integration.test_hostile_capture import serve_bodies

pytestmark = pytest.mark.timeout(120)

BIG = 123456789012345678901234567890  # past a double's 53 bits and past 64 bits
BELOW_INT64 = -9223372036854775809  # the first integer orjson rounds, 19 digits
PAST_UINT64 = 18446744073709551616  # 2**64: orjson keeps 2**64 - 1 exact, not this

RID = "resp_numbers_1"
RAW = (
    b'{"id":"resp_numbers_1","object":"response","status":"completed","model":"qwen-plus",'
    b'"tools":[{"type":"function","name":"f","parameters":{"maximum":18446744073709551616}}],'
    b'"x_seed":-9223372036854775809,'
    b'"output":[{"type":"message","role":"assistant","x_trace":-9223372036854775809,'
    b'"content":[{"type":"output_text","text":"Hi","annotations":[],'
    b'"x_big":123456789012345678901234567890}]}]}'
)


async def derived_values(engine: Any) -> dict[str, Any]:
    """The big numbers as read back through the engine (its JSON deserializer)."""
    async with engine.connect() as conn:
        part = (await conn.execute(select(content_parts.c.extra))).scalar_one()
        item = (await conn.execute(select(output_items.c.extra))).scalar_one()
        extra = (await conn.execute(select(responses.c.extra))).scalar_one()
        tools = (await conn.execute(select(tool_sets.c.tools))).scalar_one()
    return {
        "part": part["x_big"],
        "item": item["x_trace"],
        "response": extra["x_seed"],
        "tools": tools[0]["parameters"]["maximum"],
    }


FORMATS = ("jsonl", "csv", "parquet")
EXACT = {"part": BIG, "item": BELOW_INT64, "response": BELOW_INT64, "tools": PAST_UINT64}


@pytest.mark.parametrize("writer", ["process", "inline"])  # the process parses raw itself
async def test_integers_beyond_64_bits_keep_every_digit_in_columns_and_exports(
    writer: str, db_url: str, make_settings: Any, tmp_path: Path
) -> None:
    async with serve_bodies({RID: RAW}) as base_url, open_database(db_url) as engine:
        await QueueStore(engine).enqueue([RID])
        await Worker(make_settings(db_url, base_url, writer=writer), engine, once=True).run()
        values = await derived_values(engine)
        # type() too: a double equal to the integer (2**64) would pass == alone
        assert {k: (type(v), v) for k, v in values.items()} == {k: (int, v) for k, v in EXACT.items()}
        async with engine.connect() as conn:  # the stored text, not only the parse of it
            cast = "CAST(extra AS TEXT)" if engine.dialect.name == "sqlite" else "extra::text"
            stored = (await conn.execute(text(f"SELECT {cast} FROM content_parts"))).scalar_one()
        assert str(BIG) in stored
        result = await renormalize(engine, everything=True, batch_size=10)
        assert (result.report.rewritten, result.report.failed) == (1, 0)
        assert await derived_values(engine) == EXACT
        for fmt in FORMATS:
            await export(engine, tmp_path / fmt, fmt=fmt, cursor=fmt, full=True)
    assert await show(make_settings(db_url), RID) == RAW

    for fmt in FORMATS:
        part = read_rows(tmp_path / fmt / "content_parts", fmt)[0]
        assert json.loads(part["extra"])["x_big"] == BIG
        response = read_rows(tmp_path / fmt / "responses", fmt)[0]
        assert json.loads(response["extra"])["x_seed"] == BELOW_INT64
        assert json.loads(response["tools"])[0]["parameters"]["maximum"] == PAST_UINT64


def read_rows(table_dir: Path, fmt: str) -> list[dict[str, Any]]:
    """The rows of one exported table's files."""
    rows: list[dict[str, Any]] = []
    for path in sorted(table_dir.glob(f"*.{fmt}")):
        if fmt == "parquet":
            rows.extend(pq.read_table(path).to_pylist())
            continue
        with path.open(newline="", encoding="utf-8") as handle:
            if fmt == "jsonl":
                rows.extend(json.loads(line) for line in handle if line.strip())
            else:
                csv.field_size_limit(sys.maxsize)
                rows.extend(csv.DictReader(handle))
    assert rows, f"no rows exported under {table_dir}"
    return rows
