"""Hostile (hostile13): input-item pages dense in arrays, each under its own limit.

All pages of one response share the ``--max-body-mb`` budget, but each page was parsed
under the limits of ``archiver.jsontext`` on its own, whose floor (65,536 arrays and
objects, and as many strings, whatever the size) let a page of 195 KB hold 65,000
``[],``. 85 such pages (16.6 MB together, under 16 MiB) for one response, held parsed
until the writer took them: ``archiver run --once --with-input-items`` peaked at 986 MiB,
past README's 512 MiB, and archived the ID. The limits must hold for all pages together.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from tests.acceptance.test_hostile13_memory import run_within_bound
from tests.generated_bodies import serve_generated

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

MiB = 1 << 20
PAGES = 85

PAGES_SOURCE = r"""
import json, sys

pages, piece, per_page = int(sys.argv[1]), sys.argv[2].encode(), int(sys.argv[3])
dense = piece * per_page

def body(rid):
    return json.dumps({"id": rid, "object": "response", "status": "completed", "output": []}).encode()

def input_items(rid, after):
    n = 0 if after is None else int(after.split("_")[1]) + 1
    more = b"true" if n + 1 < pages else b"false"
    head = b'{"object":"list","data":[{"type":"message","id":"it_%d","role":"user","content":[' % n
    tail = b'0]}],"has_more":%s,"last_id":"it_%d"}' % (more, n)
    return head + dense + tail
"""


def dense_pages_server(
    pages: int = PAGES, piece: str = "[],", per_page: int = 65_000
) -> AbstractContextManager[str]:
    """The pages of ``PAGES_SOURCE`` served; yields the base URL."""
    return serve_generated(PAGES_SOURCE, str(pages), piece, str(per_page))


@pytest.mark.parametrize("writer", ["process", "inline"])
def test_input_item_pages_share_the_limits_of_one_body(tmp_path: Path, writer: str) -> None:
    with dense_pages_server() as base_url:
        rows = run_within_bound(base_url, tmp_path, writer, ["resp_h13_items"], "dense input-item pages")
    [(state, error)] = rows
    assert state == "failed", (state, error)
    assert error.startswith("input items: all pages together hold"), error


@pytest.mark.parametrize("writer", ["process", "inline"])
def test_input_items_within_the_limits_wait_for_the_writer_within_the_memory_bound(
    tmp_path: Path, writer: str
) -> None:
    """Found: input items wait for the writer parsed, while ``--max-held-mb`` counts the
    bytes of their pages, and a batch of them was not written alone (only response bodies
    made a batch large). Three responses, each with 92 pages of ``["a",1.5,0,0],`` (an
    array, a string and a float per 20 bytes, within the limits; 16.6 MB together, under
    ``--max-body-mb``): 918-927 MiB with ``--writer process``, 570 MiB inline."""
    ids = [f"resp_h13_items_{i}" for i in range(3)]
    with dense_pages_server(92, '["a",1.5,0,0],      ', 9000) as base_url:
        rows = run_within_bound(base_url, tmp_path, writer, ids, "input items within the limits")
    assert [state for state, _ in rows] == ["archived"] * 3, rows
