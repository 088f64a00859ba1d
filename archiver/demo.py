"""``archiver demo``: the whole job end to end against the built-in mock API, no key needed."""

from __future__ import annotations

import re
import sys

from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

from archiver import commands
from archiver.db import open_database
from archiver.dburl import redact_url
from archiver.errors import NotADemoDatabase
from archiver.mockapi import start_mock_server
from archiver.output import dumps, format_status
from archiver.queue import QueueStore
from archiver.settings import Settings
from archiver.worker import Worker

# A realistic mix: mostly normal responses, a few that exercise the failure rules.
DEMO_SCENARIOS = (
    ("ok", 70),
    ("kitchensink", 2),
    ("unicode", 3),
    ("pending2", 3),
    ("flaky1", 5),
    ("ratelimit1", 3),
    ("notfound", 4),
    ("trunc", 2),
    ("nul", 2),
)


DEMO_ID = re.compile(r"resp_(?:{})_demo\d{{5,}}".format("|".join(name for name, _ in DEMO_SCENARIOS)))
"""The shape of every ID :func:`demo_ids` makes."""


def demo_ids(count: int) -> list[str]:
    """``count`` sample IDs in the proportions of DEMO_SCENARIOS."""
    weights = sum(w for _, w in DEMO_SCENARIOS)
    ids: list[str] = []
    for scenario, weight in DEMO_SCENARIOS:
        n = max(1, round(count * weight / weights))
        ids.extend(f"resp_{scenario}_demo{i:05d}" for i in range(n))
    return ids[: max(count, len(DEMO_SCENARIOS))]


async def foreign_id(engine: AsyncEngine) -> str | None:
    """An ID in the queue or the archive that the demo did not create, or None.

    A real archive answers at its first row; a demo database is read through (it is small).
    """
    async with engine.connect() as conn:
        tables = set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))
        for table in ("archive_queue", "responses"):
            if table not in tables:
                continue
            rows = await conn.stream(text(f"SELECT id FROM {table}"))  # a fixed table name
            async for (rid,) in rows:
                if not DEMO_ID.fullmatch(rid):
                    await rows.close()
                    return str(rid)
    return None


async def check_demo_database(database_url: str) -> None:
    """Refuse a database holding IDs the demo did not create, before anything is written to it.

    Raises:
        NotADemoDatabase: naming the database and one such ID.
    """
    async with open_database(database_url, upgrade=False) as engine:
        foreign = await foreign_id(engine)
    if foreign is not None:
        raise NotADemoDatabase(
            f"{redact_url(database_url.strip())} holds IDs the demo did not create ({foreign}): "
            "the demo does not write into a real archive; give it a database of its own with "
            "--database-url (default sqlite:///demo.db)"
        )


async def run_demo(settings: Settings, *, count: int = 200) -> int:
    """Start the mock, queue sample IDs, archive them, print the status and a sample query.

    Raises:
        NotADemoDatabase: the database holds IDs the demo did not create (nothing is written).
    """
    out = sys.stdout
    await check_demo_database(settings.database_url)
    async with await start_mock_server() as mock:
        demo = settings.with_changes(
            base_url=mock.base_url,
            api_key=None,
            backoff_base=0.2,
            backoff_cap=2.0,
            not_found_recheck=0.5,
            repoll=0.3,
            max_attempts=4,
            concurrency=min(settings.concurrency, 32),
            poll_interval=0.2,
        )
        print(f"mock Responses API at {mock.base_url}", file=out)
        async with open_database(demo.database_url) as engine:
            counts = await QueueStore(engine).enqueue(demo_ids(count))
            print(
                f"queued {counts.queued} sample IDs ({counts.already_known} already known)",
                file=out,
            )
            summary = await Worker(demo, engine, once=True).run()
            async with engine.connect() as conn:
                rows = (
                    await conn.execute(
                        text(
                            "SELECT model, count(*), sum(input_tokens), sum(output_tokens) "
                            "FROM responses GROUP BY model ORDER BY count(*) DESC"
                        )
                    )
                ).fetchall()
    details = await commands.status(demo)
    print(format_status(details), file=out)
    print(
        "\nresponses per model (SELECT model, count(*), sum(input_tokens), sum(output_tokens) ...):",
        file=out,
    )
    for model, n, tokens_in, tokens_out in rows:
        print(f"  {model:<24} {n:>5}  in={tokens_in or 0:>8}  out={tokens_out or 0:>8}", file=out)
    print(f"\nrun summary: {dumps(summary.as_dict())}", file=out)
    # The flag, always: other commands read ARCHIVER_DATABASE_URL, which the demo ignored.
    print(
        f"\nthe archive is in {details['database']}; try: archiver show resp_ok_demo00000 "
        f"--database-url {details['database']}",
        file=out,
    )
    return 0
