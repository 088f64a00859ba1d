"""The floor: the least work that still fetches, parses and stores every response.

One aiohttp session, an ``asyncio.Semaphore(C)``, ``json.loads`` of each body (so a
broken body would be noticed) and ``sqlite3.executemany`` of the raw bytes into one
``id``/``raw`` table. No retries, no queue, no normalized rows: what archiver does
beyond this is the price of its guarantees.

    python bench/floor_aiohttp.py --base-url URL --ids-file IDS --db OUT.db --concurrency C

Prints one JSON line: ``{"client": "floor", "fetched": N, "errors": E, "duration_s": S}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import time

import aiohttp

FLUSH_EVERY = 1000


async def archive(base_url: str, ids: list[str], db_path: str, concurrency: int) -> dict[str, object]:
    db = sqlite3.connect(db_path)
    db.execute("CREATE TABLE IF NOT EXISTS responses (id TEXT PRIMARY KEY, raw BLOB NOT NULL)")
    pending: list[tuple[str, bytes]] = []
    errors = 0
    written = 0
    sem = asyncio.Semaphore(concurrency)
    prefix = base_url.rstrip("/") + "/responses/"
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def fetch(response_id: str) -> None:
            nonlocal errors, written, pending
            async with sem:
                try:
                    async with session.get(prefix + response_id) as resp:
                        body = await resp.read()
                        status = resp.status
                except (aiohttp.ClientError, OSError, TimeoutError):
                    errors += 1
                    return
            if status != 200:
                errors += 1
                return
            json.loads(body)
            pending.append((response_id, body))
            if len(pending) >= FLUSH_EVERY:
                db.executemany("INSERT OR REPLACE INTO responses (id, raw) VALUES (?, ?)", pending)
                written += len(pending)
                pending = []

        await asyncio.gather(*(fetch(i) for i in ids))
    if pending:
        db.executemany("INSERT OR REPLACE INTO responses (id, raw) VALUES (?, ?)", pending)
        written += len(pending)
    db.commit()
    db.close()
    return {"fetched": written, "errors": errors}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--ids-file", required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    with open(args.ids_file, encoding="utf-8") as f:
        ids = [line.strip() for line in f if line.strip()]
    started = time.perf_counter()
    result = asyncio.run(archive(args.base_url, ids, args.db, args.concurrency))
    result = {"client": "floor", **result, "duration_s": round(time.perf_counter() - started, 3)}
    print(json.dumps(result), flush=True)
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
