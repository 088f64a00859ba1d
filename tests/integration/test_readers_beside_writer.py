"""Commands that only read, run beside a daemon that writes: they must not stop its writes.

On SQLite every transaction of the archiver begins ``BEGIN IMMEDIATE`` (the write lock up
front, so two writers never deadlock). A command that only reads in a transaction took the
write lock too: ``archiver export`` beside a running daemon held it for each chunk it read,
and the daemon's writer and every push waited (4.5 s at worst, exporting 146,000 responses
beside a writer taking the lock every 10 ms). These tests hold the write lock in another
connection, as a writer in the middle of a batch does, and check the readers still read.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from archiver.db import open_database
from archiver.export import export
from archiver.mockapi import start_mock_server
from tests.integration.test_export import archive

pytestmark = pytest.mark.timeout(90)


async def test_export_reads_its_chunks_while_another_process_holds_the_write_lock(
    sqlite_url: str, make_settings: Any, tmp_path: Path
) -> None:
    ids = [f"resp_ok_reader{i:03d}" for i in range(40)]
    async with await start_mock_server() as mock, open_database(sqlite_url) as engine:
        await archive(engine, make_settings(sqlite_url, mock.base_url), ids)
        writer = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
        writer.execute("BEGIN IMMEDIATE")  # a writer in the middle of a batch
        out = tmp_path / "out"
        running = asyncio.create_task(export(engine, out, full=True, chunk_size=5))
        try:
            # Every chunk is read and written while the lock is held elsewhere: only the
            # cursor's move at the very end waits for it.
            for _ in range(200):
                written = [p for p in out.rglob("*") if p.is_file() and p.stat().st_size > 0]
                if len(written) >= 2 or running.done():
                    break
                await asyncio.sleep(0.05)
            assert written, "the export read nothing while another connection held the write lock"
        finally:
            writer.execute("COMMIT")
            writer.close()
        report = await asyncio.wait_for(running, 60)
    assert report.responses == len(ids)
