"""Results waiting for the writer hold their bytes only, never their parse.

Found: with ``--writer inline`` (the default on one core), each fetch kept its parsed body
in the result for the writer to reuse. ``--max-held-mb`` counts the bytes of waiting
bodies, not their parse, and a small body may hold 65,536 strings or arrays whatever its
size (the floor of ``jsontext.max_containers``), parsed at 25 to 35 times its size: 400
bodies of 260 KB (65,000 ``"a",``) took ``archiver run --once`` to 701 MiB and 400 of
195 KB (65,000 ``[],``) to 893 MiB, past README's 512 MiB. Now the fetch drops its parse
in every mode and the writer parses again (no cost measured: 2.3-2.45 s of CPU for 5,000
mock bodies either way).
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

DENSE_BODIES = r"""
import sys

piece = sys.argv[1].encode()

def body(rid: str) -> bytes:
    head = b'{"id":"%s","object":"response","status":"completed","model":"m","output":[],"x":[' % rid.encode()
    return head + piece * 65_000 + b"0]}"
"""


@pytest.mark.parametrize(("piece", "count"), [('"a",', 400), ("[],", 300)], ids=["strings", "arrays"])
def test_small_dense_bodies_waiting_for_the_inline_writer_stay_within_the_memory_bound(
    tmp_path: Path, piece: str, count: int
) -> None:
    """Before: 707 MiB (strings, 400 bodies) and 731 MiB (arrays, 300; 882 for 400)."""
    with serve_generated(DENSE_BODIES, piece) as base_url:
        db = tmp_path / "archive.db"
        env = {
            **base_env(),
            "ARCHIVER_DATABASE_URL": f"sqlite:///{db}",
            "ARCHIVER_BASE_URL": base_url,
            "ARCHIVER_WRITER": "inline",
        }
        cli = Cli(env, tmp_path)
        ids = [f"resp_dense_{i:04d}" for i in range(count)]
        assert cli("enqueue", input="\n".join(ids).encode()).returncode == 0
        sampler, seconds, code = run_measured(cli, tmp_path, ())
    print(f"\n{piece}: {seconds:.1f} s, peak RSS {sampler.peak_sum / MiB:.0f} MiB, exit {code}")
    assert code == 0, (tmp_path / "run.err").read_bytes()[-2000:]
    assert len(sampler.peak_by_pid) == 1, sampler.label_by_pid  # inline: no writer process
    assert sampler.peak_sum < PEAK_BOUND, f"peak RSS {sampler.peak_sum / MiB:.0f} MiB"
    with closing(sqlite3.connect(db)) as conn:
        states = dict(conn.execute("SELECT state, count(*) FROM archive_queue GROUP BY state").fetchall())
    assert states == {"archived": count}, states
