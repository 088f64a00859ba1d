"""compact: old archives (raw as received, before migration 0008) converted online, crash-safe, smaller."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text, update

from archiver.archived_bodies import read_bodies
from archiver.commands import show
from archiver.compact import DaemonRunning, compact
from archiver.db import open_database
from archiver.mockapi import body_for, start_mock_server
from archiver.queue import QueueStore
from archiver.renormalize import renormalize
from archiver.schema import archive_dictionaries, responses
from archiver.worker import Worker
from tests.integration.test_renormalize import archive_corpus, assert_consistent, damage, projection

pytestmark = pytest.mark.timeout(300)

MOCK_IDS = [f"resp_ok_c{i:05d}" for i in range(600)]
OLD_BODIES = 400
"""Bodies of the old archive that compact converts (more than the 128 that train a dictionary)."""


async def archive_old(
    db_url: str, engine: Any, make_settings: Any, corpus_dir: Path | None, count: int = len(MOCK_IDS)
) -> dict[str, bytes]:
    """An archive as archiver wrote it before 0008: raw as received, raw_codec NULL, no dictionary."""
    bodies = {} if corpus_dir is None else await archive_corpus(db_url, engine, make_settings, corpus_dir)
    async with await start_mock_server() as mock:
        await QueueStore(engine).enqueue(MOCK_IDS[:count])
        await Worker(make_settings(db_url, mock.base_url), engine, once=True).run()
    bodies.update({rid: body_for(rid) for rid in MOCK_IDS[:count]})
    async with engine.begin() as conn:
        for rid, body in bodies.items():
            await conn.execute(
                update(responses)
                .where(responses.c.id == rid)
                .values(raw=body, raw_codec=None, raw_dict_id=None)
            )
        await conn.execute(archive_dictionaries.delete())
    return bodies


async def codecs(engine: Any) -> dict[str, int]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(func.coalesce(responses.c.raw_codec, "NULL"), func.count()).group_by(responses.c.raw_codec)
        )
        return {str(name): int(n) for name, n in rows}


def file_bytes(url: str) -> int:
    path = url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return os.path.getsize(path)


async def test_compact_converts_an_old_archive_byte_exact_and_gives_space_back(
    db_url: str, make_settings: Any, corpus_dir: Path
) -> None:
    settings = make_settings(db_url)
    async with open_database(db_url) as engine:
        bodies = await archive_old(db_url, engine, make_settings, corpus_dir, count=300)
        expected = await projection(engine)
        await damage(engine)  # and the rows of an older normalization
        assert (await codecs(engine)) == {"NULL": len(bodies)}
        before = file_bytes(db_url) if db_url.startswith("sqlite") else None

        result = await compact(engine, batch_size=50)
        after = file_bytes(db_url) if before is not None else None  # online: incremental vacuum
        assert result.dictionary_trained is not None and result.dictionary == result.dictionary_trained
        assert result.report.rewritten == result.report.done == len(bodies), result.as_dict()
        # The corpus is mostly base64 images, which zstd takes only to ~0.74.
        saved = result.report.stored_before - result.report.stored_after
        assert saved > 0.2 * result.report.stored_before
        found = await codecs(engine)
        assert "NULL" not in found and found.get("zstd+dict", 0) >= len(bodies) - 5, found
        assert await projection(engine) == expected
        await assert_consistent(engine)
        mock_ids = MOCK_IDS[:300]
        async with engine.connect() as conn:
            assert await read_bodies(conn, mock_ids) == {rid: bodies[rid] for rid in mock_ids}
        again = await compact(engine, vacuum=True)  # nothing left to do but a full vacuum
        assert again.report.rewritten == 0 and again.dictionary_trained is None
        assert again.space.startswith("VACUUM FULL" if before is None else "VACUUM: the file was rewritten")
        assert await projection(engine) == expected
    for rid in set(bodies) - set(mock_ids):
        assert await show(settings, rid) == bodies[rid], rid
    if before is not None:
        assert "incremental vacuum" in result.space and "bytes given back" in result.space
        assert after is not None and after < before - saved // 2
    else:
        assert result.space.startswith("VACUUM (ANALYZE)")


async def test_an_old_file_without_incremental_vacuum_needs_vacuum_once(
    sqlite_url: str, make_settings: Any
) -> None:
    async with open_database(sqlite_url) as engine:
        await archive_old(sqlite_url, engine, make_settings, None, count=OLD_BODIES)
    path = sqlite_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:  # as files created before archiver set auto_vacuum
        conn.execute("PRAGMA auto_vacuum = NONE")
        conn.execute("VACUUM")
    before = file_bytes(sqlite_url)
    async with open_database(sqlite_url) as engine:
        result = await compact(engine)
        assert "archiver compact --vacuum" in result.space
        async with engine.begin() as conn:  # a daemon that reported itself a moment ago
            await conn.execute(
                text(
                    "INSERT INTO archive_workers (owner, state, state_since, started_at, updated_at) "
                    "VALUES ('host:1', 'ok', 0, 0, (julianday('now') - 2440587.5) * 86400.0)"
                )
            )
        with pytest.raises(DaemonRunning, match="stop `archiver run` first"):
            await compact(engine, vacuum=True)
        async with engine.begin() as conn:
            await conn.execute(text("DELETE FROM archive_workers"))
        vacuumed = await compact(engine, vacuum=True)
    assert vacuumed.space.startswith("VACUUM")
    assert file_bytes(sqlite_url) < 0.7 * before
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2


async def kill_mid_way(
    sqlite_url: str,
    args: list[str],
    progressed: Callable[[sqlite3.Connection], bool],
    sig: signal.Signals = signal.SIGKILL,
) -> tuple[int, bytes]:
    """Run ``archiver ARGS``, send ``sig`` once ``progressed`` (polled on the file) says so;
    (exit status, stderr)."""
    path = sqlite_url.removeprefix("sqlite:///")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARCHIVER_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "archiver",
        *args,
        env={**env, "ARCHIVER_DATABASE_URL": sqlite_url},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.returncode is None:
            await asyncio.sleep(0.02)
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
                if progressed(conn):
                    break
        assert proc.returncode is None, f"{args[0]} finished before it could be stopped"
        proc.send_signal(sig)
    finally:
        _, err = await proc.communicate()
    return await proc.wait(), err


async def test_compact_killed_mid_way_finishes_when_run_again(sqlite_url: str, make_settings: Any) -> None:
    async with open_database(sqlite_url) as engine:
        bodies = await archive_old(sqlite_url, engine, make_settings, None)
        expected = await projection(engine)
    before = file_bytes(sqlite_url)

    def half_done(conn: sqlite3.Connection) -> bool:
        left = conn.execute("SELECT count(*) FROM responses WHERE raw_codec IS NULL").fetchone()[0]
        return bool(left <= len(bodies) // 2)

    await kill_mid_way(sqlite_url, ["compact", "--batch-size", "5"], half_done)
    async with open_database(sqlite_url) as engine:
        halfway = await codecs(engine)
        assert 0 < halfway.get("NULL", 0) < len(bodies), halfway
        await assert_consistent(engine)
        result = await compact(engine)
        assert result.report.rewritten == halfway["NULL"]
        assert "NULL" not in await codecs(engine)
        assert await projection(engine) == expected
        async with engine.connect() as conn:
            assert await read_bodies(conn, sorted(bodies)) == bodies
    # Small bodies too (here plain zstd, no dictionary: 1.4 KB -> 0.8 KB): their rows
    # moved, whole pages freed and given back online. Updated in place, nothing came back.
    assert file_bytes(sqlite_url) < 0.85 * before


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
async def test_renormalize_stopped_mid_way_resumes_when_run_again(
    sqlite_url: str, make_settings: Any, sig: signal.Signals
) -> None:
    async with open_database(sqlite_url) as engine:
        await archive_old(sqlite_url, engine, make_settings, None)
        expected = await projection(engine)
        await damage(engine)
    middle = MOCK_IDS[len(MOCK_IDS) // 2]

    def half_done(conn: sqlite3.Connection) -> bool:
        row = conn.execute("SELECT value FROM archive_meta WHERE name = 'renormalize'").fetchone()
        return row is not None and json.loads(row[0])["after"] >= middle

    status, err = await kill_mid_way(
        sqlite_url, ["renormalize", "--all", "--batch-size", "5"], half_done, sig
    )
    if sig == signal.SIGTERM:  # the batch in flight is finished, the position saved, exit 0
        assert status == 0, err
        assert b"archiver: stopped by SIGTERM: run the same command again to finish" in err
    else:
        assert status == -signal.SIGKILL
    async with open_database(sqlite_url) as engine:
        await assert_consistent(engine)
        assert await projection(engine) != expected
        result = await renormalize(engine, everything=True)
        assert result.resumed_after is not None and result.resumed_after >= middle
        assert result.report.done == result.report.total < len(MOCK_IDS) // 2 + 5
        assert await projection(engine) == expected


async def test_compact_removes_input_items_no_response_lists(db_url: str, make_settings: Any) -> None:
    from archiver.schema import input_item_contents, input_items

    async with await start_mock_server() as mock, open_database(db_url) as engine:
        await QueueStore(engine).enqueue(["resp_ok_l1", "resp_kitchensink_l2"])
        await Worker(make_settings(db_url, mock.base_url, with_input_items=True), engine, once=True).run()
        async with engine.begin() as conn:  # as a re-fetch whose input items changed leaves it
            await conn.execute(input_item_contents.insert().values(sha256="f" * 64, item={"role": "user"}))
            listed = (await conn.execute(select(input_items).order_by("response_id", "position"))).all()
            contents = (await conn.execute(select(func.count()).select_from(input_item_contents))).scalar()
        assert listed
        result = await compact(engine)
        assert result.orphans.input_items == 1
        async with engine.connect() as conn:
            assert (
                await conn.execute(select(input_items).order_by("response_id", "position"))
            ).all() == listed
            left = (await conn.execute(select(func.count()).select_from(input_item_contents))).scalar()
        assert left == contents - 1
