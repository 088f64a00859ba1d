"""The baseline: what a user writes instead of archiver, with the official ``openai`` SDK.

``AsyncOpenAI(base_url=..., api_key="x").responses.retrieve(id)`` under an
``asyncio.Semaphore(C)``, each response written to SQLite (``sqlite3``, one ``id``/``raw``
table) as it arrives, one commit at the end. By default the stored JSON is
``response.model_dump_json()`` (what most users write); ``--raw-body`` stores the bytes
as received through ``with_raw_response`` instead. SDK defaults otherwise (2 retries,
its own connection pool).

    python bench/baseline_openai.py --base-url URL --ids-file IDS --db OUT.db --concurrency C

Prints one JSON line: ``{"client": "baseline", "fetched": N, "errors": E, "duration_s": S}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import time

from openai import AsyncOpenAI, OpenAIError


async def archive(
    base_url: str, ids: list[str], db_path: str, concurrency: int, raw_body: bool
) -> dict[str, object]:
    db = sqlite3.connect(db_path)
    db.execute("CREATE TABLE IF NOT EXISTS responses (id TEXT PRIMARY KEY, raw TEXT NOT NULL)")
    client = AsyncOpenAI(base_url=base_url, api_key="x")
    sem = asyncio.Semaphore(concurrency)
    fetched = errors = 0

    async def fetch(response_id: str) -> None:
        nonlocal fetched, errors
        async with sem:
            try:
                if raw_body:
                    raw = await client.responses.with_raw_response.retrieve(response_id)
                    data: str | bytes = raw.content
                else:
                    response = await client.responses.retrieve(response_id)
                    data = response.model_dump_json(warnings=False)
            except OpenAIError:
                errors += 1
                return
        db.execute("INSERT OR REPLACE INTO responses (id, raw) VALUES (?, ?)", (response_id, data))
        fetched += 1

    async with client:
        await asyncio.gather(*(fetch(i) for i in ids))
    db.commit()
    db.close()
    return {"fetched": fetched, "errors": errors}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--ids-file", required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--raw-body", action="store_true", help="store the body as received")
    args = parser.parse_args()
    with open(args.ids_file, encoding="utf-8") as f:
        ids = [line.strip() for line in f if line.strip()]
    started = time.perf_counter()
    result = asyncio.run(archive(args.base_url, ids, args.db, args.concurrency, args.raw_body))
    result = {"client": "baseline", **result, "duration_s": round(time.perf_counter() - started, 3)}
    print(json.dumps(result), flush=True)
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
