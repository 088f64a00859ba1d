"""Compressed ``raw``: every body comes back byte-exact, with and without a dictionary."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, func, select, text

from archiver import codec
from archiver.commands import show
from archiver.db import open_database
from archiver.errors import ArchiverError
from archiver.mockapi import MockConfig, body_for, load_bodies, start_mock_server
from archiver.queue import QueueStore
from archiver.schema import archive_dictionaries, responses
from archiver.store import read_bodies
from archiver.worker import Worker

pytestmark = pytest.mark.timeout(180)


async def _archive(settings: Any, engine: Any, ids: list[str]) -> None:
    await QueueStore(engine).enqueue(ids)
    await Worker(settings, engine, once=True).run()
    async with engine.connect() as conn:
        archived = (await conn.execute(select(func.count()).select_from(responses))).scalar()
    assert archived >= len(ids)


def _run_show(rid: str, url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARCHIVER_")}
    return subprocess.run(
        [sys.executable, "-m", "archiver", "show", rid],
        env={**env, "ARCHIVER_DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def _codecs(engine: Any) -> dict[str, int]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(func.coalesce(responses.c.raw_codec, "NULL"), func.count()).group_by(responses.c.raw_codec)
        )
        return {str(name): int(n) for name, n in rows}


@pytest.mark.parametrize("with_dictionary", [False, True], ids=["zstd", "zstd+dict"])
async def test_show_is_byte_exact_for_every_corpus_body(
    db_url: str, make_settings: Any, corpus_dir: Path, with_dictionary: bool
) -> None:
    bodies = load_bodies(corpus_dir)
    assert len(bodies) > 100
    settings = make_settings(db_url)
    async with open_database(db_url) as engine:
        if with_dictionary:
            # Trained on other bodies (mock ones), as an archive's first dictionary would be.
            data = codec.train(body_for(f"resp_ok_t{i}") for i in range(500))
            async with engine.begin() as conn:
                await conn.execute(
                    archive_dictionaries.insert().values(
                        created_at=func.now(), size=len(data), trained_on=1000, samples=500, data=data
                    )
                )
        async with await start_mock_server(MockConfig(bodies_dir=corpus_dir, bodies_only=True)) as mock:
            # max_polls=1: the corpus has an in_progress snapshot; it is archived at once.
            await _archive(make_settings(db_url, mock.base_url, max_polls=1), engine, sorted(bodies))
        found = await _codecs(engine)
        async with engine.connect() as conn:
            stored = dict((await conn.execute(select(responses.c.id, func.length(responses.c.raw)))).all())
    compressed = "zstd+dict" if with_dictionary else "zstd"
    assert set(found) <= {compressed, "identity"} and found.get(compressed, 0) >= len(bodies) - 5, found
    assert sum(stored.values()) < 0.8 * sum(len(b) for b in bodies.values())
    for rid, body in bodies.items():
        assert await show(settings, rid) == body, rid


async def test_the_first_dictionary_is_trained_at_1000_bodies_and_used_after(
    db_url: str, make_settings: Any
) -> None:
    first = [f"resp_ok_d{i:05d}" for i in range(codec.FIRST_TRAINING_AT)]
    later = [f"resp_ok_e{i:05d}" for i in range(200)]
    async with await start_mock_server() as mock, open_database(db_url) as engine:
        settings = make_settings(db_url, mock.base_url)
        await _archive(settings, engine, first[:500])
        async with engine.connect() as conn:
            assert (await conn.execute(select(func.count()).select_from(archive_dictionaries))).scalar() == 0
        await _archive(settings, engine, first[500:])
        async with engine.connect() as conn:
            dicts = (await conn.execute(select(archive_dictionaries))).all()
        assert len(dicts) == 1
        assert dicts[0].trained_on >= codec.FIRST_TRAINING_AT and dicts[0].samples >= 900
        assert dicts[0].size == len(dicts[0].data) <= codec.DICTIONARY_SIZE
        await _archive(settings, engine, later)
        # Not retrained before 10x the bodies.
        async with engine.connect() as conn:
            assert (await conn.execute(select(func.count()).select_from(archive_dictionaries))).scalar() == 1
            with_dict = (
                (
                    await conn.execute(
                        select(responses.c.id).where(
                            responses.c.raw_codec == "zstd+dict", responses.c.raw_dict_id == dicts[0].id
                        )
                    )
                )
                .scalars()
                .all()
            )
            bodies = await read_bodies(conn, first + later)
        assert set(later) <= set(with_dict)
        assert bodies == {rid: body_for(rid) for rid in first + later}


def test_retraining_is_due_at_ten_times_the_last_training() -> None:
    assert codec.next_training_at(None) == 1_000
    assert codec.next_training_at(1_003) == 10_030
    assert codec.next_training_at(20_000) == 200_000


async def test_identical_bytes_fetched_again_change_only_fetched_at(db_url: str, make_settings: Any) -> None:
    rid = "resp_ok_same1"
    async with await start_mock_server() as mock, open_database(db_url) as engine:
        settings = make_settings(db_url, mock.base_url)
        await _archive(settings, engine, [rid])
        query = select(responses.c.raw, responses.c.raw_codec, responses.c.change_seq, responses.c.fetched_at)
        async with engine.connect() as conn:
            before = (await conn.execute(query)).one()
        assert before.raw_codec == "zstd" and bytes(before.raw) != body_for(rid)
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE archive_queue SET state = 'pending' WHERE id = :i"), {"i": rid})
        summary = await Worker(settings, engine, once=True).run()
        assert summary.unchanged == 1
        async with engine.connect() as conn:
            after = (await conn.execute(query)).one()
    assert (after.raw, after.raw_codec, after.change_seq) == (before.raw, before.raw_codec, before.change_seq)
    assert after.fetched_at > before.fetched_at


async def test_a_body_whose_dictionary_is_missing_is_one_clear_error(
    sqlite_url: str, make_settings: Any, tmp_path: Path
) -> None:
    rid = "resp_ok_nodict"
    async with await start_mock_server() as mock, open_database(sqlite_url) as engine:
        data = codec.train(body_for(f"resp_ok_t{i}") for i in range(500))
        async with engine.begin() as conn:
            await conn.execute(
                archive_dictionaries.insert().values(
                    created_at=func.now(), size=len(data), trained_on=1000, samples=500, data=data
                )
            )
        await _archive(make_settings(sqlite_url, mock.base_url), engine, [rid])
        assert await show(make_settings(sqlite_url), rid) == body_for(rid)
        async with engine.begin() as conn:
            await conn.execute(delete(archive_dictionaries))
        with pytest.raises(ArchiverError, match="dictionary 1"):
            await show(make_settings(sqlite_url), rid)
    out = await asyncio.to_thread(_run_show, rid, sqlite_url)
    assert out.returncode == 1 and out.stdout == ""
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "dictionary 1" in out.stderr and "archive_dictionaries" in out.stderr
