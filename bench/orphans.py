"""What compact's orphan sweep (archiver.orphans) costs the writers beside it.

    python bench/orphans.py [--responses N] [--orphans K] [--postgres URL|throwaway]

Builds an archive (SQLite in a scratch directory, or PostgreSQL) of N responses, each
naming one of 50 tool sets and listing 3 of 1,000 input items, plus K tool sets and K
input items that nothing references; then runs the sweep and prints, per table, its
total time and the longest time it held the writers' lock (a page's delete transaction:
what a writer waits at most). In the same run, as the baseline, the delete as compact
did it before (``NOT IN`` over every ``response_input_items`` row, under the same lock),
timed in a transaction that is rolled back. Also the writer's added cost: the read of
the sweep counter that ``ToolSetIds`` does once per batch, against the read of the
normalize mode it already did.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.engine import Connection

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

from archiver import orphans  # noqa: E402
from archiver.db import open_database, sqlite_write_engine  # noqa: E402
from archiver.projection import archive_mode_sync, lock_writers_sync  # noqa: E402
from archiver.tool_sets import ToolSetIds  # noqa: E402

SETS = 50
ITEMS = 1000
OLD_DROP = text(
    "DELETE FROM input_item_contents WHERE sha256 IN :shas AND sha256 NOT IN "
    "(SELECT item_sha256 FROM response_input_items WHERE item_sha256 IN :shas)"
).bindparams(bindparam("shas", expanding=True))


def _sha(kind: str, n: int) -> str:
    return hashlib.sha256(f"{kind}{n}".encode()).hexdigest()


def _fill(conn: Connection, responses: int, unreferenced: int) -> None:
    now = datetime(2026, 12, 1, tzinfo=UTC)
    conn.execute(
        text("INSERT INTO tool_sets (id, sha256, tools, first_seen_at) VALUES (:id, :sha, '[]', :now)"),
        [{"id": n + 1, "sha": _sha("set", n), "now": now} for n in range(unreferenced + SETS)],
    )
    conn.execute(
        text("INSERT INTO input_item_contents (sha256, item) VALUES (:sha, '{}')"),
        [{"sha": _sha("item", n)} for n in range(ITEMS + unreferenced)],
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
                    "now": now,
                    "seq": n + 1,
                    "set": unreferenced + 1 + n % SETS,
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


def _timed_drops(held: dict[str, list[float]]) -> Any:
    real = orphans._drop_sync

    def drop(conn: Connection, table: Any, keys: Sequence[Any], seq: int) -> int:
        start = time.perf_counter()
        try:
            return real(conn, table, keys, seq)
        finally:
            held.setdefault(table.name, []).append(time.perf_counter() - start)

    return drop


async def _bench(url: str, responses: int, unreferenced: int) -> None:
    async with open_database(url) as engine:
        start = time.perf_counter()
        async with engine.begin() as conn:
            await conn.run_sync(_fill, responses, unreferenced)
        if engine.dialect.name == "postgresql":  # as autovacuum does after a bulk load
            async with engine.connect() as conn:
                await conn.execution_options(isolation_level="AUTOCOMMIT")
                await conn.exec_driver_sql("ANALYZE")
        print(
            f"archive: {responses:,} responses, {unreferenced:,} unreferenced tool sets and input items "
            f"({time.perf_counter() - start:.1f} s to build)"
        )
        async with engine.connect() as conn:  # the baseline: the old delete, rolled back
            shas = [_sha("item", ITEMS + n) for n in range(min(orphans.PAGE, unreferenced))]
            await conn.begin()
            start = time.perf_counter()
            await conn.run_sync(lock_writers_sync)
            await conn.execute(OLD_DROP, {"shas": shas})
            old_held = time.perf_counter() - start
            await conn.rollback()
        held: dict[str, list[float]] = {}
        orphans._drop_sync = _timed_drops(held)
        start = time.perf_counter()
        counts = await orphans.sweep_orphans(engine)
        total = time.perf_counter() - start
        print(f"sweep: {counts.tool_sets:,} tool sets, {counts.input_items:,} input items in {total:.2f} s")
        for name, times in held.items():
            print(
                f"  {name}: {len(times)} delete transactions, lock held "
                + ", ".join(f"{t * 1000:.1f}" for t in times)
                + " ms"
            )
        new_held = max(held["input_item_contents"])
        print(
            f"input items, lock held per page: {new_held * 1000:.1f} ms now, {old_held * 1000:.1f} ms "
            f"as compact deleted before (NOT IN over every listing): ratio {new_held / old_held:.3f}"
        )
        # The connection a writer uses: SQLite's batch writer has a synchronous engine.
        sync_engine = sqlite_write_engine(engine)
        if sync_engine is not None:
            with sync_engine.connect() as sync_conn:
                swept_read, mode_read = _read_costs(sync_conn)
            sync_engine.dispose()
        else:
            async with engine.connect() as conn:
                swept_read, mode_read = await conn.run_sync(_read_costs)
        print(
            f"writer, once a batch: the sweep-counter read {swept_read * 1e6:.0f} us, the mode read it "
            f"already did {mode_read * 1e6:.0f} us: ratio {swept_read / mode_read:.2f}"
        )


def _read_costs(conn: Connection, reads: int = 2000) -> tuple[float, float]:
    """Seconds one read of the sweep counter takes, and one of the normalize mode."""
    cache = ToolSetIds()
    costs = []
    for read in (cache._follow_sweeps, archive_mode_sync):
        start = time.perf_counter()
        for _ in range(reads):
            read(conn)
        costs.append((time.perf_counter() - start) / reads)
    return costs[0], costs[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--responses", type=int, default=200_000)
    parser.add_argument("--orphans", type=int, default=5_000)
    parser.add_argument(
        "--postgres",
        metavar="URL|throwaway",
        help="measure PostgreSQL instead: an empty scratch database of yours, or 'throwaway' "
        "(a local server, as the tests start it)",
    )
    args = parser.parse_args()
    if args.postgres == "throwaway":
        from tests.pgserver import throwaway_server

        with throwaway_server() as url:
            asyncio.run(_bench(url, args.responses, args.orphans))
    elif args.postgres:
        asyncio.run(_bench(args.postgres, args.responses, args.orphans))
    else:
        with tempfile.TemporaryDirectory() as scratch:
            asyncio.run(_bench(f"sqlite:///{scratch}/archive.db", args.responses, args.orphans))


if __name__ == "__main__":
    main()
