"""The writer parses one large body at a time, whatever else its batch holds.

Found: a write batch closes once it holds an eighth of ``--max-held-mb`` of bodies (4 MiB),
so it may hold smaller bodies and then one of ``--max-body-mb``. The writer normalized
every body of the batch before it wrote any (bar the row cap), and a normalized body
keeps what its ``extra`` columns hold parsed: four dense bodies of 0.9 MiB, then a dense
16 MiB one, peaked 65 MiB above the 16 MiB body alone (310 MiB against 245). The batch
of large bodies is written alone in the writer process, yet inside it the parse of each
body beside the others' rows was bounded by nothing but the batch's size. Now a body of
1 MiB or more (``writer.LARGE_BODY_BYTES``) is normalized once the results before it are
written, and written on its own: 251 MiB against 244.

Each batch is written by a real :class:`archiver.writer.InlineWriter` on a SQLite file, in
a child process that reports how far its memory rose (its own high-water mark).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(180)

MiB = 1 << 20

SCRIPT = r"""
import asyncio, os, subprocess, sys
from datetime import UTC, datetime

from archiver.db import open_database
from archiver.outcomes import Archived
from archiver.queue import QueueStore
from archiver.settings import Settings
from archiver.store import FetchResult
from archiver.writer import InlineWriter, _write_threaded_store

names = [b"%02x" % i for i in range(256)]
member_object = b"{" + b",".join(b'"' + name + b'":["y"]' for name in names) + b"},"


def body(rid, size):
    head = b'{"id":"%s","object":"response","status":"completed","model":"m","output":[],"x":[' % rid.encode()
    return head + member_object * ((size - len(head) - 8) // len(member_object)) + b"0]}"


def status(name):
    for line in open("/proc/self/status"):
        if line.startswith(name + ":"):
            return int(line.split()[1]) * 1024


async def main():
    url, sizes = sys.argv[1], [int(float(mib) * (1 << 20)) for mib in sys.argv[2:]]
    async with open_database(url) as engine:
        ids = [f"resp_{i}" for i in range(len(sizes))]
        await QueueStore(engine).enqueue(ids)
        jobs = await QueueStore(engine).claim_batch("test", len(sizes), 600, 5)
        writer = InlineWriter(_write_threaded_store(engine, Settings(database_url=url)))
        now = datetime.now(UTC)
        batch = [
            FetchResult(job, Archived(body(job.response_id, size), 200, True, "completed"), now)
            for job, size in zip(sorted(jobs, key=lambda job: job.response_id), sizes)
        ]
        before = status("VmRSS")
        report = await writer.write(batch)
        print(status("VmHWM") - before, report.archived)
        await writer.close()


asyncio.run(main())
"""


def written(tmp_path: Path, name: str, sizes: list[float]) -> tuple[int, int]:
    """(how far the writer's memory rose writing one batch of bodies of ``sizes`` MiB, IDs archived)."""
    url = f"sqlite:///{tmp_path / name}.db"
    subprocess.run(
        [sys.executable, "-m", "archiver", "migrate", "--database-url", url], check=True, capture_output=True
    )
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, url, *map(str, sizes)], capture_output=True, check=True, timeout=150
    )
    peak, archived = map(int, done.stdout.split())
    return peak, archived


def test_a_large_body_is_parsed_without_the_rows_of_the_bodies_before_it(tmp_path: Path) -> None:
    alone, archived = written(tmp_path, "alone", [16])
    assert archived == 1
    after_small, archived = written(tmp_path, "after-small", [0.9, 0.9, 0.9, 0.9, 16])
    assert archived == 5
    print(f"16 MiB alone: {alone / MiB:.0f} MiB; after four of 0.9 MiB: {after_small / MiB:.0f} MiB")
    assert after_small < alone + 20 * MiB
