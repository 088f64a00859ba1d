"""archiver.row_budget: a body makes at most one normalized row per 512 of its bytes."""

from __future__ import annotations

import orjson
import pytest

from archiver.normalize import normalize, normalize_body
from archiver.row_budget import BYTES_PER_ROW, MIN_ROWS, TooManyRows, max_rows


def _body(items: int) -> bytes:
    output = [{"type": "message", "content": [{"type": "output_text", "text": "a"}]}] * items
    return orjson.dumps({"id": "resp_rows", "object": "response", "output": output})


def test_max_rows_is_one_per_512_bytes_with_a_floor() -> None:
    assert BYTES_PER_ROW == 512
    assert max_rows(0) == max_rows(MIN_ROWS * BYTES_PER_ROW) == MIN_ROWS
    assert max_rows(16 << 20) == 32_768


def test_a_body_past_its_rows_fails_and_one_at_them_is_normalized() -> None:
    body = orjson.loads(_body(60))  # 120 rows: an item and a content part each
    assert sum(map(len, normalize(body, max_rows=120).children.values())) == 120
    with pytest.raises(TooManyRows, match=r"more than the 119 normalized rows \(one per 512 bytes"):
        normalize(body, max_rows=119)
    rows = normalize(body).children  # no limit given: none applies
    assert all(type(table) is list for table in rows.values())  # plain lists, whatever the budget
    assert all(type(table) is list for table in normalize(body, max_rows=120).children.values())


def test_normalize_body_limits_by_the_body_s_size() -> None:
    # ~60 bytes per item: 9,000 items (18,000 rows, ~520 KB) pass the floor of 16,384
    big = _body(9_000)
    assert len(big) < MIN_ROWS * BYTES_PER_ROW
    with pytest.raises(TooManyRows, match="more than the 16,384 normalized rows"):
        normalize_body(big)
    assert len(normalize_body(_body(8_000)).children["output_items"]) == 8_000
