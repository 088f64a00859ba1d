"""Storage benchmark: what an archived response costs on disk, split by what holds the bytes.

Archives the recorded bodies of ../shared/corpus/responses and N mock bodies (the mock
API's ``body_for``) through the real pipeline (mock API over loopback, ``Worker`` with its
writer process) into SQLite and, with ``--postgres``, PostgreSQL, and prints per database
and corpus: bytes per response and the ratio to the raw JSON, split into

- raw: the ``raw`` column as stored (and the zstd dictionaries, if any);
- normalized: every other byte of the archive tables' rows (``responses`` columns and
  the child tables, PostgreSQL TOAST included);
- indexes: every index of the archive tables (primary keys included);
- free: unused bytes inside the pages of the archive tables and indexes;
- other: the queue and bookkeeping tables with their indexes, and file overhead.

SQLite: measured with the ``dbstat`` virtual table after ``VACUUM``; the total is the file
size. PostgreSQL: after ``VACUUM FULL``, ``pg_total_relation_size`` / ``pg_indexes_size``
per table, ``pg_column_size(raw)``, and ``pgstattuple`` for the free space when the
extension is installed (else free space counts as normalized); the total is the sum of
``pg_total_relation_size`` over every table (the catalogs of an empty database are left out).

    python bench/storage.py [--corpus DIR] [--mock N] [--postgres URL|throwaway] [--workdir DIR]
                            [--normalize full,summary]

Each corpus is archived once per normalize mode (``--normalize``, default both): the
``summary`` rows keep only the ``responses`` row and the usage rows (see README,
"Rebuilding and compacting").

Works with any archiver version that has ``archiver.worker.Worker`` (so it can be run on
an older clone for a before/after comparison).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sqlite3
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

from archiver.db import open_database  # noqa: E402
from archiver.mockapi import MockConfig, body_for, load_bodies, start_mock_server  # noqa: E402
from archiver.queue import QueueStore  # noqa: E402
from archiver.schema import CHILD_TABLES, responses  # noqa: E402
from archiver.settings import Settings  # noqa: E402
from archiver.worker import Worker  # noqa: E402

CORPUS = BENCH.parent.parent / "shared" / "corpus" / "responses"
MOCK_ID = "resp_ok_s{:07d}"
ARCHIVE_TABLES = {"responses", "archive_dictionaries", *(t.name for t in CHILD_TABLES)}
ARCHIVE_TABLES |= {"input_items", "input_item_contents", "response_input_items"}  # before/after 0010
ARCHIVE_TABLES |= {"tool_sets"}  # from 0015
PARTS = ("raw", "normalized", "indexes", "free", "other")


@dataclass
class Measure:
    database: str
    corpus: str
    responses: int
    json_bytes: int
    parts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.parts.values())


def _settings(url: str, base_url: str) -> Settings:
    return Settings(
        database_url=url,
        base_url=base_url,
        concurrency=32,
        backoff_base=0.01,
        backoff_cap=0.05,
        not_found_recheck=0.05,
        repoll=0.02,
        poll_interval=0.05,
        request_timeout=30.0,
    )


async def _archive(
    url: str, ids: list[str], config: MockConfig, dictionary: bytes | None, mode: str = "full"
) -> list[str]:
    """Archive ``ids`` through the pipeline; the IDs that have a ``responses`` row.

    ``dictionary``: put in ``archive_dictionaries`` first, as if the archive had trained it.
    ``mode``: the archive's normalize mode (``--normalize``), recorded before the first write.
    """
    async with await start_mock_server(config) as mock, open_database(url) as engine:
        if mode != "full":
            from archiver.projection import settle_mode_sync

            async with engine.begin() as conn:
                await conn.run_sync(settle_mode_sync, mode)
        if dictionary is not None:
            from archiver.schema import archive_dictionaries

            async with engine.begin() as conn:
                await conn.execute(
                    archive_dictionaries.insert().values(
                        created_at=datetime.now(UTC),
                        size=len(dictionary),
                        trained_on=0,
                        samples=0,
                        data=dictionary,
                    )
                )
        await QueueStore(engine).enqueue(ids)
        await Worker(_settings(url, mock.base_url), engine, once=True).run()
        async with engine.connect() as conn:
            archived = [
                row[0] for row in await conn.execute(responses.select().with_only_columns(responses.c.id))
            ]
    if len(archived) != len(ids):
        print(f"storage: {len(ids) - len(archived)} of {len(ids)} bodies not archived (left out)", flush=True)
    return archived


def _sqlite_measure(path: Path) -> dict[str, int]:
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("VACUUM")
        kinds = dict(conn.execute("SELECT name, type FROM sqlite_master WHERE type IN ('table', 'index')"))
        owners = dict(
            conn.execute("SELECT name, tbl_name FROM sqlite_master WHERE type IN ('table', 'index')")
        )
        raw = conn.execute("SELECT coalesce(sum(length(raw)), 0) FROM responses").fetchone()[0]
        if "archive_dictionaries" in kinds:
            raw += conn.execute("SELECT coalesce(sum(length(data)), 0) FROM archive_dictionaries").fetchone()[
                0
            ]
        parts = dict.fromkeys(PARTS, 0)
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        parts["free"] += conn.execute("PRAGMA freelist_count").fetchone()[0] * page_size
        for name, size, unused in conn.execute(
            "SELECT name, sum(pgsize), sum(unused) FROM dbstat GROUP BY name"
        ):
            archive = owners.get(name, "") in ARCHIVE_TABLES
            if not archive:
                parts["other"] += size
            elif kinds.get(name) == "index":
                parts["indexes"] += size - unused
                parts["free"] += unused
            else:
                parts["normalized"] += size - unused
                parts["free"] += unused
        parts["normalized"] -= raw
        parts["raw"] = raw
    finally:
        conn.close()
    parts["other"] += path.stat().st_size - sum(parts.values())
    return parts


async def _pg_measure(url: str) -> dict[str, int]:
    import asyncpg  # an archiver dependency

    conn = await asyncpg.connect(url)
    try:
        await conn.execute("VACUUM FULL ANALYZE")
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS pgstattuple")
            has_stattuple = True
        except asyncpg.PostgresError:
            has_stattuple = False
        parts = dict.fromkeys(PARTS, 0)
        tables = await conn.fetch(
            "SELECT c.oid, c.relname, c.reltoastrelid FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind = 'r'"
        )
        archive_total = 0
        for oid, name, toast in tables:
            total = int(await conn.fetchval("SELECT pg_total_relation_size($1::oid::regclass)", oid))
            if name not in ARCHIVE_TABLES:
                parts["other"] += total
                continue
            archive_total += total
            parts["indexes"] += int(await conn.fetchval("SELECT pg_indexes_size($1::oid::regclass)", oid))
            if has_stattuple:
                for rel in (oid, toast):
                    if rel:
                        parts["free"] += int(
                            await conn.fetchval("SELECT free_space FROM pgstattuple($1::oid::regclass)", rel)
                        )
                for index in await conn.fetch("SELECT indexrelid FROM pg_index WHERE indrelid = $1", oid):
                    stat = await conn.fetchrow(
                        "SELECT index_size, avg_leaf_density FROM pgstatindex($1::oid::regclass)",
                        index["indexrelid"],
                    )
                    if stat is not None and stat["avg_leaf_density"] == stat["avg_leaf_density"]:  # not NaN
                        free = int(stat["index_size"] * (1 - stat["avg_leaf_density"] / 100))
                        parts["free"] += free
                        parts["indexes"] -= free
        raw = int(await conn.fetchval("SELECT coalesce(sum(pg_column_size(raw)), 0) FROM responses"))
        if await conn.fetchval("SELECT to_regclass('archive_dictionaries') IS NOT NULL"):
            raw += int(
                await conn.fetchval("SELECT coalesce(sum(pg_column_size(data)), 0) FROM archive_dictionaries")
            )
        parts["raw"] = raw
        parts["normalized"] = archive_total - parts["indexes"] - parts["free"] - raw
    finally:
        await conn.close()
    return parts


def _pg_admin(url: str, sql: str) -> None:
    import asyncpg

    async def go() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(go())


def _pg_url(base: str, database: str) -> str:
    return base.rsplit("/", 1)[0] + "/" + database


@contextlib.contextmanager
def _postgres(spec: str | None) -> Iterator[str | None]:
    if not spec:
        yield None
    elif spec == "throwaway":
        from tests.pgserver import throwaway_server

        with throwaway_server() as url:
            yield url
    else:
        yield spec.replace("postgresql+asyncpg://", "postgresql://")


Corpus = tuple[str, list[str], dict[str, bytes], MockConfig, "bytes | None"]


def _corpora(corpus_dir: Path, mock_n: int) -> list[Corpus]:
    corpora: list[Corpus] = []
    bodies = load_bodies(corpus_dir) if corpus_dir.is_dir() else {}
    if not corpus_dir.is_dir():
        print(f"storage: corpus not found at {corpus_dir}: skipped", flush=True)
    elif not bodies:
        print(f"storage: no bodies in {corpus_dir}: skipped", flush=True)
    else:
        config = MockConfig(bodies_dir=corpus_dir, bodies_only=True)
        corpora.append((f"corpus ({len(bodies)} real bodies)", sorted(bodies), bodies, config, None))
        try:
            from archiver import codec
        except ImportError:  # before compression (issue 17): no dictionaries to try
            pass
        else:
            # Show what a dictionary does for bodies it was not trained on: one trained on
            # the other half of the corpus (an archive of the whole corpus trains its own
            # at 128 bodies, on bodies it then compresses).
            ids = sorted(bodies)
            half = ids[1::2]
            try:
                data = codec.train(bodies[i] for i in ids[0::2])
            except Exception as exc:  # zstd refuses too few samples (a tiny --corpus)
                print(
                    f"storage: no dictionary from {len(ids) - len(half)} bodies ({exc}): skipped", flush=True
                )
            else:
                label = f"corpus, odd half ({len(half)}), dictionary from the even half"
                corpora.append((label, half, bodies, config, data))
    if mock_n:
        ids = [MOCK_ID.format(i) for i in range(mock_n)]
        corpora.append((f"mock ({mock_n} bodies)", ids, {i: body_for(i) for i in ids}, MockConfig(), None))
    return corpora


def run(
    corpus_dir: Path, mock_n: int, postgres: str | None, work: Path, modes: tuple[str, ...] = ("full",)
) -> list[Measure]:
    """Archive every corpus into every database in every normalize mode and measure; prints
    one table per run."""
    results: list[Measure] = []
    corpora = _corpora(corpus_dir, mock_n)
    runs = [
        (f"{label}, {mode}" if mode != "full" else label, ids, bodies, config, dictionary, mode)
        for mode in modes
        for label, ids, bodies, config, dictionary in corpora
    ]
    with _postgres(postgres) as pg_base:
        for n, (label, ids, bodies, config, dictionary, mode) in enumerate(runs):
            path = work / f"storage-{n}.db"
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            done = asyncio.run(_archive(f"sqlite:///{path}", ids, config, dictionary, mode))
            json_bytes = sum(len(bodies[i]) for i in done)
            results.append(Measure("SQLite", label, len(done), json_bytes, _sqlite_measure(path)))
            print(_table([results[-1]]), flush=True)
            if pg_base:
                name = f"archiver_storage_{n}"
                _pg_admin(pg_base, f'DROP DATABASE IF EXISTS "{name}"')
                _pg_admin(pg_base, f'CREATE DATABASE "{name}"')
                try:
                    url = _pg_url(pg_base, name)
                    done = asyncio.run(_archive(url, ids, config, dictionary, mode))
                    parts = asyncio.run(_pg_measure(url))
                    json_bytes = sum(len(bodies[i]) for i in done)
                    results.append(Measure("PostgreSQL", label, len(done), json_bytes, parts))
                    print(_table([results[-1]]), flush=True)
                finally:
                    _pg_admin(pg_base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return results


def _table(results: list[Measure]) -> str:
    head = ["database", "corpus", "responses", "JSON B/resp", "total B/resp", "ratio"]
    head += [f"{p} (ratio)" for p in PARTS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in results:
        per = m.json_bytes / m.responses
        cells = [m.database, m.corpus, str(m.responses), f"{per:,.0f}", f"{m.total / m.responses:,.0f}"]
        cells.append(f"{m.total / m.json_bytes:.2f}x")
        cells += [f"{m.parts[p] / m.responses:,.0f} ({m.parts[p] / m.json_bytes:.2f})" for p in PARTS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", type=Path, default=CORPUS, help="directory of recorded bodies (*.json)")
    p.add_argument(
        "--mock", type=int, default=20_000, metavar="N", help="mock bodies to archive (default 20000)"
    )
    p.add_argument("--postgres", default=None, metavar="URL|throwaway", help="also measure PostgreSQL")
    p.add_argument(
        "--workdir", type=Path, default=None, help="where the SQLite files go (default: a temp dir)"
    )
    p.add_argument(
        "--normalize",
        default="full,summary",
        metavar="MODES",
        help="comma-separated normalize modes to measure, each a run of its own (default full,summary; "
        "summary needs an archiver with --normalize)",
    )
    args = p.parse_args(argv)
    modes = tuple(m.strip() for m in args.normalize.split(",") if m.strip())
    work = args.workdir or Path(tempfile.mkdtemp(prefix="archiver-storage-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.pop("ARCHIVER_DATABASE_URL", None)
    try:
        results = run(args.corpus, args.mock, args.postgres, work, modes)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print("\nstorage summary (bytes per response; ratio to the raw JSON in parentheses)")
    print(_table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
