"""The writer's rows are bounded: per body by its size, per transaction by a count.

Found: a normalized row is a dict of every column of its table, ~1 KB, for as little as
17 bytes of body, and nothing bounded how many a body made or a batch held:
- three valid 16 MiB bodies of 200,000 message items with one content part each
  (400,000 rows each) took ``archiver run --once`` to 546-556 MiB (986,000 items of
  ``{"type":"xxxxx"}``: 1,387 MiB), past README's 512 MiB;
- 100 bodies of 272 KB with 16,000 items each, under every limit, batched by
  ``--max-held-mb 96`` (README's formula: 552 MiB) took it to 861-1,050 MiB: the writer
  normalized every body of a batch before writing any.
Now a body may make one row per 512 of its bytes (at least 16,384), and the writer
writes a batch in one transaction per 65,536 rows (:mod:`archiver.row_budget`). Since
write batches are also sized by what their results hold (hostile13), the batched case
stays at ~214 MiB even without the per-transaction cap; it runs 24 bodies as a guard
(213 MiB, as with 50).
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import orjson
import pytest

from tests.acceptance.conftest import base_env
from tests.acceptance.test_memory_bound import PEAK_BOUND, Cli, run_measured
from tests.generated_bodies import serve_generated
from tests.peak_rss import measured, peak_bytes

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

MiB = 1 << 20

ITEM_BODIES = r"""
import sys

item, count = sys.argv[1].encode(), int(sys.argv[2])

def body(rid: str) -> bytes:
    head = b'{"id":"%s","object":"response","status":"completed","model":"m","output":[' % rid.encode()
    if sys.argv[3:] == ["input-items"]:  # the items are input items, the body is small
        return head + b"]}"
    return head + item * count + b'{"type":"z"}]}'

def input_items(rid: str, after: str | None) -> bytes:
    return b'{"object":"list","data":[' + item * count + b'{"type":"z"}],"has_more":false}'
"""

MESSAGE = '{"type":"message","role":"assistant","content":[{"type":"output_text","text":"a"}]},'
TINY = '{"type":"xxxxx"},'

INPUT = '{"type":"message","role":"user","content":"a"},'
ITEMS = ("--with-input-items",)

CASES = {
    # (item, items per body, bodies, extra flags, the state every ID ends in)
    "16 MiB of messages": (MESSAGE, 199_677, 3, (), "failed"),
    "batched small bodies": (TINY, 16_000, 24, ("--max-held-mb", "96"), "archived"),
    # input items were held parsed and as rows, counted as their pages' bytes only:
    # 1,128 MiB for 10 responses of 300,000 items, 897 MiB for 60 of 16,000
    "300,000 input items": (INPUT, 300_000, 10, ITEMS, "failed"),
    "16,000 input items": (INPUT, 16_000, 60, ITEMS, "archived"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_rows_stay_within_the_memory_bound(tmp_path: Path, case: str) -> None:
    item, per_body, bodies, flags, expected = CASES[case]
    served = ("input-items",) if flags == ITEMS else ()
    with serve_generated(ITEM_BODIES, item, str(per_body), *served) as base_url:
        db = tmp_path / "archive.db"
        env = {**base_env(), "ARCHIVER_DATABASE_URL": f"sqlite:///{db}", "ARCHIVER_BASE_URL": base_url}
        cli = Cli(env, tmp_path)
        ids = [f"resp_rows_{i:04d}" for i in range(bodies)]
        assert cli("enqueue", input="\n".join(ids).encode()).returncode == 0
        sampler, seconds, code = run_measured(cli, tmp_path, flags)
    print(f"\n{case}: {seconds:.1f} s, peak RSS sum {sampler.peak_sum / MiB:.0f} MiB, exit {code}")
    assert code == 0, (tmp_path / "run.err").read_bytes()[-2000:]
    assert sampler.peak_sum < PEAK_BOUND, f"peak RSS sum {sampler.peak_sum / MiB:.0f} MiB"
    with closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT state, last_error FROM archive_queue").fetchall()
        table = "response_input_items" if flags == ITEMS else "output_items"
        items = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    assert {state for state, _ in rows} == {expected}, rows[:3]
    if expected == "failed":
        limit = ("(one per 512 bytes", "at least 16,384)")
        assert all(all(part in error for part in limit) for _, error in rows), rows[0]
        assert items == 0
    else:
        assert items == bodies * (per_body + 1)


def _measured(env: dict[str, str], cwd: Path, *args: str) -> int:
    """Peak RSS of ``archiver ARGS`` (its own, tests/peak_rss.py); it must succeed."""
    report = cwd / "peak"
    done = subprocess.run(
        measured([sys.executable, "-m", "archiver", *args], report),
        env=env,
        cwd=cwd,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return peak_bytes(report)


def test_renormalize_and_export_read_rows_in_bounded_pieces(tmp_path: Path) -> None:
    """An archive of 24 bodies of 16,000 bare items (208 KB each, 384,000 rows).

    ``renormalize`` gathered a transaction by decoded bytes only (4 MiB at the default
    ``--max-held-mb``): ~20 bodies, 320,000 rows a transaction. ``export`` read a chunk's
    child rows whatever their number (8 MiB of bodies: ~40 responses; 100 responses of
    16,000 rows took it to 527 MiB in JSON lines, 639 in Parquet). Both now stop at
    65,536 rows. Measured on this archive with both caps lifted: 455 and 214 MiB; with
    them: 160 and 114 MiB (the bounds asserted leave room for one piece's rows beside
    the process's ~100 MiB). It ran 40 bodies before; 24 keep both apart from their
    bounds in less time.
    """
    bodies, per_body = 24, 16_000
    with serve_generated(ITEM_BODIES, '{"type":"x"},', str(per_body)) as base_url:
        db = tmp_path / "archive.db"
        env = {**base_env(), "ARCHIVER_DATABASE_URL": f"sqlite:///{db}", "ARCHIVER_BASE_URL": base_url}
        cli = Cli(env, tmp_path)
        ids = "\n".join(f"resp_rb_{i:03d}" for i in range(bodies))
        assert cli("enqueue", input=ids.encode()).returncode == 0
        assert cli("run", "--once", "--max-held-mb", "96").returncode == 0
    renormalized = _measured(env, tmp_path, "renormalize", "--all")
    exported = _measured(env, tmp_path, "export", "--full", str(tmp_path / "out"))
    print(f"\nrenormalize: {renormalized / MiB:.0f} MiB, export: {exported / MiB:.0f} MiB")
    assert renormalized < 256 * MiB
    assert exported < 160 * MiB
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT count(*) FROM output_items").fetchone()[0] == bodies * (per_body + 1)
    (items,) = (tmp_path / "out" / "output_items").glob("*.jsonl")
    with items.open("rb") as lines:
        assert sum(1 for _ in lines) == bodies * (per_body + 1)


def test_export_reads_the_rows_of_one_large_response_in_bounded_pieces(tmp_path: Path) -> None:
    """One response with 400,000 output items, as an archive written before the row limits
    may hold (a body of 16 MiB could make over a million rows): the export read a
    response's child rows whole, whatever their number; it now writes them in pieces of
    at most 65,536 rows, all from the one snapshot of the chunk."""
    rows = 400_000
    with serve_generated(ITEM_BODIES, '{"type":"x"},', "10") as base_url:
        db = tmp_path / "archive.db"
        env = {**base_env(), "ARCHIVER_DATABASE_URL": f"sqlite:///{db}", "ARCHIVER_BASE_URL": base_url}
        cli = Cli(env, tmp_path)
        assert cli("enqueue", input=b"resp_large_000\nresp_small_001\n").returncode == 0
        assert cli("run", "--once").returncode == 0
    with closing(sqlite3.connect(db)) as conn, conn:
        (seq,) = conn.execute("SELECT change_seq FROM responses WHERE id = 'resp_large_000'").fetchone()
        conn.execute("DELETE FROM output_items WHERE response_id = 'resp_large_000'")
        conn.executemany(
            "INSERT INTO output_items (response_id, position, type, extra, change_seq) "
            "VALUES (?, ?, ?, ?, ?)",
            (("resp_large_000", i, "x", f'{{"k":"{i:07d}"}}', seq) for i in range(rows)),
        )
    exported = _measured(env, tmp_path, "export", "--full", str(tmp_path / "out"))
    print(f"\nexport of one response with {rows:,} rows: {exported / MiB:.0f} MiB")
    assert exported < 160 * MiB
    (items,) = (tmp_path / "out" / "output_items").glob("*.jsonl")
    with items.open("rb") as lines:
        positions = [
            (record["response_id"], record["position"], record["extra"])
            for record in map(orjson.loads, lines)
        ]
    large = [(p, extra) for rid, p, extra in positions if rid == "resp_large_000"]
    assert large == [(i, f'{{"k":"{i:07d}"}}') for i in range(rows)]  # all, once, in order
    assert sum(1 for rid, _, _ in positions if rid == "resp_small_001") == 11
