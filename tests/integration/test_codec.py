"""Compressed ``raw``: every body comes back byte-exact, with and without a dictionary."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import zstandard
from sqlalchemy import delete, func, select, text

from archiver import codec
from archiver.commands import show
from archiver.db import open_database
from archiver.errors import ArchiverError
from archiver.mockapi import MockConfig, body_for, load_bodies, start_mock_server
from archiver.queue import QueueStore
from archiver.schema import archive_dictionaries, responses
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


@pytest.mark.parametrize("dictionary", ["none", "own", "mock"])
async def test_show_is_byte_exact_for_every_corpus_body(
    db_url: str, make_settings: Any, corpus_dir: Path, dictionary: str
) -> None:
    """none: fewer bodies than make a dictionary, stored plain; own: the archive trains its
    first dictionary on the corpus and re-encodes the bodies stored before; mock: a
    dictionary trained on other (mock) bodies is there from the start."""
    bodies = load_bodies(corpus_dir)
    assert len(bodies) > codec.FIRST_TRAINING_AT
    if dictionary == "none":
        bodies = dict(sorted(bodies.items())[: codec.FIRST_TRAINING_AT - 1])
    settings = make_settings(db_url)
    async with open_database(db_url) as engine:
        if dictionary == "mock":
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
            counted = select(func.count()).select_from(archive_dictionaries)
            dictionaries = (await conn.execute(counted)).scalar()
    assert dictionaries == (0 if dictionary == "none" else 1)
    compressed = "zstd" if dictionary == "none" else "zstd+dict"
    assert set(found) <= {compressed, "identity"} and found.get(compressed, 0) >= len(bodies) - 5, found
    assert sum(stored.values()) < 0.8 * sum(len(b) for b in bodies.values())
    for rid, body in bodies.items():
        assert await show(settings, rid) == body, rid


def test_the_first_dictionary_is_due_at_128_bodies_and_the_next_at_ten_times_the_last() -> None:
    # When the first one comes, and that the plain rows before it are re-encoded: test_reencode.py.
    assert codec.next_training_at(None) == codec.FIRST_TRAINING_AT == 128
    assert codec.next_training_at(12) == 128
    assert codec.next_training_at(1_003) == 10_030
    assert codec.next_training_at(20_000) == 200_000


def test_a_dictionary_is_sized_to_the_bytes_it_is_trained_on() -> None:
    assert codec.dictionary_size(72_000) == 9_000
    assert codec.dictionary_size(4_000_000) == codec.DICTIONARY_SIZE
    assert codec.dictionary_size(100) == codec.MIN_DICTIONARY_SIZE
    samples = [body_for(f"resp_ok_z{i}") for i in range(100)]
    assert len(codec.train(samples)) <= codec.dictionary_size(sum(map(len, samples))) < codec.DICTIONARY_SIZE


def _random_body(i: int) -> bytes:
    return b'{"id": "resp_%d", "blob": "%s"}' % (i, base64.b64encode(os.urandom(8000)))


def test_a_dictionary_is_kept_only_if_it_makes_held_out_bodies_smaller() -> None:
    mock = codec.train_checked([body_for(f"resp_ok_h{i}") for i in range(codec.FIRST_TRAINING_AT)])
    assert (mock.trained_on, mock.held_out) == (103, 25)
    assert mock.useful and mock.dictionary_bytes < 0.3 * mock.plain_bytes
    # Bodies with nothing in common but their shape: the dictionary saves well under 2%.
    noise = codec.train_checked([_random_body(i) for i in range(codec.FIRST_TRAINING_AT)])
    assert not noise.useful and noise.dictionary_bytes > 0.98 * noise.plain_bytes


def test_small_bodies_use_level_9_with_a_dictionary_and_everything_else_level_3() -> None:
    data = codec.train(body_for(f"resp_ok_t{i}") for i in range(300))
    dictionary = zstandard.ZstdCompressionDict(data)
    small, large = body_for("resp_ok_small"), body_for("resp_big_large")
    assert len(small) <= codec.SMALL_BODY_BYTES < len(large)
    writer, plain = codec.Codec({1: data}), codec.Codec()

    def frame(level: int, body: bytes, with_dictionary: bool = True) -> bytes:
        if not with_dictionary:
            return zstandard.ZstdCompressor(level=level).compress(body)
        return zstandard.ZstdCompressor(level=level, dict_data=dictionary).compress(body)

    assert writer.encode(small) == (frame(9, small), "zstd+dict", 1)
    assert writer.encode(large) == (frame(3, large), "zstd+dict", 1)
    assert plain.encode(small) == (frame(3, small, False), "zstd", None)
    assert frame(9, small) != frame(3, small)  # else this test could not tell the levels apart
    for body in (small, large):
        assert writer.decode(*writer.encode(body)) == body


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
