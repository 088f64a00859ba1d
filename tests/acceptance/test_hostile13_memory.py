"""Hostile (hostile13): valid 16 MiB bodies that kept under each pre-parse limit on its own.

The limits of ``archiver.jsontext`` count arrays and objects (one per 8 bytes, an object
counting as two) and strings (one per 8 bytes, a member name of many spellings counting as
two) each on its own, and numbers not at all. Three bodies at once (``archiver run
--once``, default settings, sampled as ``tests/acceptance/test_memory_bound.py`` does):

- ``["a",1.5],``: an array, a string and a float per 10 bytes, each under its limit,
  parsed at ~18 times the body: 624 MiB (``--writer process``), 560 MiB (``inline``).
- ``"1a2b3" :0,``: one-off member names with a space before the colon, which the count of
  names (a quote followed by ``:``) did not see: 539 MiB.
- ``-9,``: integers CPython does not keep once (below -5, above 256), 36 bytes each for
  3 of text, parsed at ~13 times the body and counted by no limit.
- ``{"t":"s","u":0}, ``: an object (counting two arrays) and a string per 17 bytes, within
  the limits that counted all kinds together (one per 5 1/3 bytes), parsed at ~15 times
  the body (a dict of 1-5 members takes ~190 bytes, three lists' worth): 568-579 MiB
  (``--writer process``), 509-753 MiB (``inline``), archived.

Both must end ``failed`` naming the limit, within README's 512 MiB.

- ``"0a":["y"],``: objects of 256 repeated member names, each holding a one-string array
  (an array and a string per 11 bytes; dict entries weigh nothing), within every limit and
  archived, parsed at ~14-17 times the body by orjson, which held its own document beside
  the objects (~22 times at its peak). The fetcher parsed each body to check it, the
  writer again to normalize it: three at once 586-622 MiB (``--writer process``: the
  fetching process 461, the writer 493), 523-782 MiB (``inline``). With one JSON escape
  in the body the fetcher's check for an echoed key parsed it once more: 671 MiB. Now
  bodies of 1 MiB or more are parsed by the standard library, which holds no document
  beside the objects (``jsontext.STDLIB_FROM``): 438 MiB (process), 387 MiB (inline);
  and the fetcher checks a body of 1 MiB or more without its parse, escapes included
  (``archiver.body_head``, ``archiver.echoes``).
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from tests.acceptance.conftest import base_env
from tests.acceptance.test_memory_bound import PEAK_BOUND, Cli, run_measured
from tests.generated_bodies import serve_generated

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

MiB = 1 << 20

BODIES = r"""
import sys

limit, kind = int(sys.argv[1]), sys.argv[2]
PIECES = {"mixed": b'["a",1.5],', "negative-integers": b"-9,", "small-objects": b'{"t":"s","u":0}, '}

def body(rid: str) -> bytes:
    head = b'{"id":"%s","object":"response","status":"completed","model":"m","output":[],"x":' % rid.encode()
    if kind in PIECES:
        piece = PIECES[kind]
        return head + b"[" + piece * ((limit - len(head) - 8) // len(piece)) + b"0]}"
    pieces, size, i = [], len(head) + 16, 0
    while size < limit:
        pieces.append(b'"%x" :0,' % i)
        size += len(pieces[-1])
        i += 1
    return head + b"{" + b"".join(pieces[:-1]) + b'"z":0}}'
"""

KINDS = {
    "mixed": "arrays, strings and floats",
    "spaced-names": "member names spaced from their colon",
    "negative-integers": "integers below -5",
    "small-objects": "objects of two members",
}


def run_within_bound(
    base_url: str, tmp_path: Path, writer: str, ids: list[str], what: str
) -> list[tuple[str, str]]:
    """``archiver run --once`` (``RUN_FLAGS``: with input items) of ``ids`` against
    ``base_url``, measured; asserts exit 0 and the peak under README's bound, and returns
    each ID's (state, last_error)."""
    db = tmp_path / "archive.db"
    env = {
        **base_env(),
        "ARCHIVER_DATABASE_URL": f"sqlite:///{db}",
        "ARCHIVER_BASE_URL": base_url,
        "ARCHIVER_WRITER": writer,
    }
    cli = Cli(env, tmp_path)
    assert cli("enqueue", input="\n".join(ids).encode()).returncode == 0
    sampler, seconds, code = run_measured(cli, tmp_path, ())
    peak = sampler.peak_sum / MiB
    print(f"\n{what} ({writer}): {seconds:.1f} s, peak RSS sum {peak:.0f} MiB, exit {code}")
    assert code == 0, (tmp_path / "run.err").read_bytes()[-2000:]
    assert sampler.samples >= 3
    assert sampler.peak_sum < PEAK_BOUND, f"peak RSS sum {peak:.0f} MiB"
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute("SELECT state, last_error FROM archive_queue ORDER BY id").fetchall()


# Every kind is refused by the fetch, before either writer sees it: both writers for one
# kind, the process writer for the rest (each run takes 10-17 s).
WRITERS = [(kind, "process") for kind in KINDS] + [("mixed", "inline")]


@pytest.mark.parametrize(("kind", "writer"), WRITERS)
def test_bodies_under_each_limit_alone_stay_within_the_memory_bound(
    tmp_path: Path, kind: str, writer: str
) -> None:
    from archiver.settings import Settings

    limit = int(Settings().max_body_mb * MiB) - 1024
    with serve_generated(BODIES, str(limit), kind) as base_url:
        rows = run_within_bound(base_url, tmp_path, writer, [f"resp_h13_{i}" for i in range(3)], KINDS[kind])
    assert [state for state, _ in rows] == ["failed"] * 3, rows
    assert all("the archiver reads" in error for _, error in rows), rows


MEMBERS = r"""
import sys

limit, escaped = int(sys.argv[1]), sys.argv[2] == "escaped"
names = [b"%02x" % i for i in range(256)]
member_object = b"{" + b",".join(b'"' + name + b'":["y"]' for name in names) + b"},"
# One JSON escape: the check for an echoed key then reads every escape of the body.
end = b'0],"e":"\\u0041"}' if escaped else b"0]}"

def body(rid: str) -> bytes:
    head = b'{"id":"%s","object":"response","status":"completed","model":"m","output":[],"x":[' % rid.encode()
    return head + member_object * ((limit - len(head) - 8 - len(end)) // len(member_object)) + end
"""


# Within every limit of archiver.parse_limits (an array and a string per 11 bytes; the
# dict entries weigh nothing), valid, and so archived.
@pytest.mark.parametrize(
    ("variant", "writer"),
    [("plain", "process"), ("plain", "inline"), ("escaped", "process")],
)
def test_members_holding_small_arrays_stay_within_the_memory_bound(
    tmp_path: Path, variant: str, writer: str
) -> None:
    from archiver.settings import Settings

    limit = int(Settings().max_body_mb * MiB) - 1024
    with serve_generated(MEMBERS, str(limit), variant) as base_url:
        rows = run_within_bound(
            base_url, tmp_path, writer, [f"resp_h13_{i}" for i in range(3)], f"members ({variant})"
        )
    assert rows == [("archived", None)] * 3, rows
