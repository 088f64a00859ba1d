"""What compact's orphan sweep (archiver.orphans) costs: its time, and the writers' wait.

    python bench/orphans.py [--responses N] [--orphans K] [--repeat R] [--postgres URL|throwaway]

Builds an archive (SQLite in a scratch directory, or PostgreSQL) of N responses, each
naming one of 50 tool sets and listing 3 of 1,000 input items, plus K tool sets and K
input items that nothing references. Then, R times each and alternating, puts the K
unreferenced rows back and sweeps them: with :func:`archiver.orphans.sweep_orphans`, and,
as the baseline, with the sweep as it was before (each page of 1,000 candidates found by
its own ``EXCEPT ... ORDER BY ... LIMIT``, which reads and sorts the whole referencing
table again). Prints the median times and their ratio, the longest time a page's delete
held the writers' lock, and what that delete costs when a daemon wrote
:data:`archiver.orphans.RESCAN_AFTER` responses since the scan (the most it reads before
the sweep scans again).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

from archiver import orphans  # noqa: E402
from archiver.db import open_database  # noqa: E402
from archiver.db_retry import with_db_retry  # noqa: E402
from archiver.transactions import statement_at_a_time  # noqa: E402

SETS = 50
ITEMS = 1000
NOW = datetime(2026, 12, 1, tzinfo=UTC)
OLD_FIND = {
    "tool_sets": text(
        "SELECT id FROM tool_sets WHERE id > :after AND id < (SELECT max(id) FROM tool_sets) "
        "EXCEPT SELECT tool_set_id FROM responses ORDER BY 1 LIMIT :n"
    ),
    "input_item_contents": text(
        "SELECT sha256 FROM input_item_contents WHERE sha256 > :after "
        "EXCEPT SELECT item_sha256 FROM response_input_items ORDER BY 1 LIMIT :n"
    ),
}


def _sha(kind: str, n: int) -> str:
    return hashlib.sha256(f"{kind}{n}".encode()).hexdigest()


def _fill(conn: Connection, responses: int) -> None:
    conn.execute(
        text("INSERT INTO tool_sets (id, sha256, tools, first_seen_at) VALUES (:id, :sha, '[]', :now)"),
        [{"id": 1_000_000_000 + n, "sha": _sha("set", n), "now": NOW} for n in range(SETS)],
    )
    conn.execute(
        text("INSERT INTO input_item_contents (sha256, item) VALUES (:sha, '{}')"),
        [{"sha": _sha("item", n)} for n in range(ITEMS)],
    )
    step = 10_000
    for start in range(0, responses, step):
        rows = range(start, min(start + step, responses))
        conn.execute(
            text(
                "INSERT INTO responses (id, raw, raw_sha256, fetched_at, archived_at, change_seq, "
                "tool_set_id) VALUES (:id, :raw, :sha, :now, :now, :seq, :set)"
            ),
            [
                {
                    "id": f"resp_{n:09d}",
                    "raw": b"{}",
                    "sha": "0" * 64,
                    "now": NOW,
                    "seq": n + 1,
                    "set": 1_000_000_000 + n % SETS,
                }
                for n in rows
            ],
        )
        conn.execute(
            text(
                "INSERT INTO response_input_items (response_id, position, item_sha256) VALUES (:id, :p, :sha)"
            ),
            [
                {"id": f"resp_{n:09d}", "p": p, "sha": _sha("item", (n * 3 + p) % ITEMS)}
                for n in rows
                for p in range(3)
            ],
        )
    conn.execute(text("UPDATE archive_changes SET seq = :n WHERE name = 'archive'"), {"n": responses})


def _put_back(conn: Connection, unreferenced: int) -> None:
    """The K unreferenced tool sets (ids below the referenced ones) and input items."""
    conn.execute(
        text(
            "INSERT INTO tool_sets (id, sha256, tools, first_seen_at) VALUES (:id, :sha, '[]', :now) "
            "ON CONFLICT DO NOTHING"
        ),
        [{"id": n + 1, "sha": _sha("orphan set", n), "now": NOW} for n in range(unreferenced)],
    )
    conn.execute(
        text("INSERT INTO input_item_contents (sha256, item) VALUES (:sha, '{}') ON CONFLICT DO NOTHING"),
        [{"sha": _sha("orphan item", n)} for n in range(unreferenced)],
    )


async def _old_sweep(engine: AsyncEngine) -> orphans.OrphanCounts:
    """The sweep before this change: one find query, over the whole table, per page."""
    counts = []
    for table, after in ((orphans._TOOL_SETS, 0), (orphans._INPUT_ITEMS, "")):
        dropped = 0
        while True:
            async with statement_at_a_time(engine) as conn:
                seq = int((await conn.execute(orphans._COUNTER)).scalar() or 0)
                find = OLD_FIND[table.name]
                keys = list((await conn.execute(find, {"after": after, "n": orphans.PAGE})).scalars())
            if not keys:
                break

            async def drop(batch: Sequence[Any] = keys, seq: int = seq, table: Any = table) -> int:
                async with engine.begin() as conn:
                    return await conn.run_sync(orphans._drop_sync, table, batch, seq)

            dropped += await with_db_retry(drop)
            after = keys[-1]
        counts.append(dropped)
    return orphans.OrphanCounts(tool_sets=counts[0], input_items=counts[1])


async def _timed(
    engine: AsyncEngine, sweep: Callable[[AsyncEngine], Awaitable[orphans.OrphanCounts]], unreferenced: int
) -> float:
    async with engine.begin() as conn:
        await conn.run_sync(_put_back, unreferenced)
    start = time.perf_counter()
    counts = await sweep(engine)
    took = time.perf_counter() - start
    assert counts == orphans.OrphanCounts(unreferenced, unreferenced), counts
    return took


def _held(times: list[float]) -> Any:
    real = orphans._drop_sync

    def drop(conn: Connection, table: Any, keys: Sequence[Any], seq: int) -> int:
        start = time.perf_counter()
        try:
            return real(conn, table, keys, seq)
        finally:
            times.append(time.perf_counter() - start)

    return drop


async def _bench(url: str, responses: int, unreferenced: int, repeat: int) -> None:
    async with open_database(url) as engine:
        start = time.perf_counter()
        async with engine.begin() as conn:
            await conn.run_sync(_fill, responses)
            await conn.run_sync(_put_back, unreferenced)
        if engine.dialect.name == "postgresql":  # as autovacuum does after a bulk load
            async with engine.connect() as conn:
                await conn.execution_options(isolation_level="AUTOCOMMIT")
                await conn.exec_driver_sql("ANALYZE")
        print(
            f"{engine.dialect.name}: {responses:,} responses, {unreferenced:,} unreferenced tool sets and "
            f"input items ({time.perf_counter() - start:.1f} s to build)"
        )
        old: list[float] = []
        new: list[float] = []
        held: list[float] = []
        real_drop = orphans._drop_sync
        for _ in range(repeat):
            old.append(await _timed(engine, _old_sweep, unreferenced))
            orphans._drop_sync = _held(held)
            new.append(await _timed(engine, orphans.sweep_orphans, unreferenced))
            orphans._drop_sync = real_drop
        old_s, new_s = statistics.median(old), statistics.median(new)
        print(
            f"  sweep before (a scan per page): median {old_s:.2f} s of {', '.join(f'{t:.2f}' for t in old)}"
        )
        print(
            f"  sweep now (one scan per table): median {new_s:.2f} s of {', '.join(f'{t:.2f}' for t in new)}"
        )
        print(f"  ratio now/before: {new_s / old_s:.3f}")
        print(
            f"  lock held per page now: max {max(held) * 1000:.1f} ms, "
            f"median {statistics.median(held) * 1000:.1f} ms"
        )
        stale = await _stale_delete(engine, unreferenced)
        print(
            f"  lock held by a page's delete with {orphans.RESCAN_AFTER:,} responses written since the "
            f"scan (the most before a rescan): {stale * 1000:.1f} ms"
        )


async def _stale_delete(engine: AsyncEngine, unreferenced: int) -> float:
    """A page's delete when RESCAN_AFTER responses were written since the scan, rolled back."""
    async with engine.begin() as conn:
        await conn.run_sync(_put_back, unreferenced)
    keys = sorted(_sha("orphan item", n) for n in range(min(orphans.PAGE, unreferenced)))
    async with statement_at_a_time(engine) as conn:
        seq = int((await conn.execute(orphans._COUNTER)).scalar() or 0) - orphans.RESCAN_AFTER
    async with engine.connect() as conn:
        await conn.begin()
        start = time.perf_counter()
        await conn.run_sync(orphans._drop_sync, orphans._INPUT_ITEMS, keys, seq)
        took = time.perf_counter() - start
        await conn.rollback()
    return took


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--responses", type=int, default=100_000)
    parser.add_argument("--orphans", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each sweep (medians are printed)")
    parser.add_argument(
        "--postgres",
        metavar="URL|throwaway",
        help="measure PostgreSQL instead: an empty scratch database of yours, or 'throwaway' "
        "(a local server, as the tests start it)",
    )
    args = parser.parse_args()
    run = (args.responses, args.orphans, args.repeat)
    if args.postgres == "throwaway":
        from tests.pgserver import throwaway_server

        with throwaway_server() as url:
            asyncio.run(_bench(url, *run))
    elif args.postgres:
        asyncio.run(_bench(args.postgres, *run))
    else:
        with tempfile.TemporaryDirectory() as scratch:
            asyncio.run(_bench(f"sqlite:///{scratch}/archive.db", *run))


if __name__ == "__main__":
    main()
