"""The bodies a new archive stores as plain zstd are re-encoded once its first dictionary exists."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest
import zstandard
from sqlalchemy import func, select, update

from archiver import codec, reencode
from archiver.archived_bodies import read_bodies
from archiver.codec import Codec
from archiver.commands import show
from archiver.compact import compact
from archiver.db import open_database
from archiver.dictionaries import WritingCodec
from archiver.export import export
from archiver.mockapi import MockConfig, body_for, start_mock_server
from archiver.queue import QueueStore
from archiver.reencode import PlainWalk
from archiver.schema import archive_dictionaries, responses
from archiver.worker import Worker

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parents[2]


async def _archive(settings: Any, engine: Any, ids: list[str]) -> None:
    await QueueStore(engine).enqueue(ids)
    await Worker(settings, engine, once=True).run()


async def _rows(engine: Any) -> dict[str, Any]:
    """Every response's stored columns by ID."""
    r = responses.c
    async with engine.connect() as conn:
        rows = await conn.execute(select(r.id, r.raw, r.raw_codec, r.raw_dict_id, r.change_seq))
        return {row.id: row for row in rows}


async def _dictionaries(engine: Any) -> list[Any]:
    async with engine.connect() as conn:
        return list(
            (await conn.execute(select(archive_dictionaries).order_by(archive_dictionaries.c.id))).all()
        )


async def _plain_rows_and_a_dictionary(url: str, make_settings: Any, engine: Any, ids: list[str]) -> Codec:
    """``ids`` archived as plain zstd rows (too few for a dictionary), then a dictionary
    trained on other mock bodies stored as the archive's first; a codec with it."""
    async with await start_mock_server() as mock:
        await _archive(make_settings(url, mock.base_url), engine, ids)
    data = codec.train(body_for(f"resp_ok_t{i}") for i in range(300))
    async with engine.begin() as conn:
        dict_id = (
            await conn.execute(
                archive_dictionaries.insert()
                .values(created_at=func.now(), size=len(data), trained_on=300, samples=300, data=data)
                .returning(archive_dictionaries.c.id)
            )
        ).scalar_one()
    return Codec({int(dict_id): data})


async def test_the_first_dictionary_comes_at_the_threshold_and_the_plain_rows_are_reencoded(
    db_url: str, make_settings: Any, tmp_path: Path
) -> None:
    first = [f"resp_ok_p{i:05d}" for i in range(codec.FIRST_TRAINING_AT - 1)]
    later = [f"resp_ok_q{i:05d}" for i in range(60)]
    async with await start_mock_server() as mock, open_database(db_url) as engine:
        settings = make_settings(db_url, mock.base_url)
        await _archive(settings, engine, first)
        assert await _dictionaries(engine) == []
        before = await _rows(engine)
        assert {row.raw_codec for row in before.values()} == {"zstd"} and len(before) == len(first)
        await _archive(settings, engine, later)
        dictionaries = await _dictionaries(engine)
        assert len(dictionaries) == 1
        first_dictionary = dictionaries[0]
        assert first_dictionary.trained_on >= codec.FIRST_TRAINING_AT
        assert first_dictionary.size == len(first_dictionary.data) <= codec.DICTIONARY_SIZE
        after = await _rows(engine)
        # Every row, the plain ones of the first run included, now uses the dictionary...
        assert {(row.raw_codec, row.raw_dict_id) for row in after.values()} == {
            ("zstd+dict", first_dictionary.id)
        }
        stored_before = sum(len(before[rid].raw) for rid in first)
        stored_after = sum(len(after[rid].raw) for rid in first)
        assert stored_after < 0.4 * stored_before, (stored_before, stored_after)
        # ...the body is the same, so the rows derived from it (and exports) are untouched...
        assert {rid: after[rid].change_seq for rid in first} == {rid: before[rid].change_seq for rid in first}
        # ...and every body reads back byte-exact: show, and the export's raw column.
        for rid in first + later:
            assert await show(make_settings(db_url), rid) == body_for(rid), rid
        await export(engine, tmp_path / "out", fmt="parquet", full=True)
    exported = pq.read_table(tmp_path / "out" / "responses" / "default-00000001.parquet").to_pylist()
    assert {row["id"]: row["raw"] for row in exported} == {rid: body_for(rid) for rid in first + later}


async def test_a_writer_reencodes_at_most_the_limit_and_compact_does_the_rest(
    sqlite_url: str, make_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reencode, "REENCODE_LIMIT", 30)
    monkeypatch.setattr(reencode, "REENCODE_BATCH", 20)
    ids = [f"resp_ok_l{i:05d}" for i in range(codec.FIRST_TRAINING_AT + 40)]
    async with await start_mock_server() as mock, open_database(sqlite_url) as engine:
        settings = make_settings(sqlite_url, mock.base_url, writer="inline")  # sees the limits set here
        await _archive(settings, engine, ids[: codec.FIRST_TRAINING_AT - 1])
        await _archive(settings, engine, ids[codec.FIRST_TRAINING_AT - 1 :])
        rows = await _rows(engine)
        plain = sorted(rid for rid, row in rows.items() if row.raw_codec == "zstd")
        # The walk goes in id order: of the rows written plain (the first run's, and the
        # second run's before the dictionary), the first 30 were re-encoded, the rest wait.
        assert set(ids[30 : codec.FIRST_TRAINING_AT - 1]) <= set(plain)
        assert not set(ids[:30]) & set(plain)
        await compact(engine)
        assert {row.raw_codec for row in (await _rows(engine)).values()} == {"zstd+dict"}
        async with engine.connect() as conn:
            assert await read_bodies(conn, ids) == {rid: body_for(rid) for rid in ids}


async def test_a_row_changed_after_it_was_read_is_not_overwritten(db_url: str, make_settings: Any) -> None:
    ids = [f"resp_ok_f{i:03d}" for i in range(12)]
    other = body_for("resp_ok_other")
    async with open_database(db_url) as engine:
        encoder = await _plain_rows_and_a_dictionary(db_url, make_settings, engine, ids)
        walk = PlainWalk(encoder)
        async with engine.begin() as conn:
            planned = await conn.run_sync(walk.read)
        assert sorted(p.response_id for p in planned) == ids
        compacted, _, dict_id = encoder.encode(body_for(ids[1]))
        async with engine.begin() as conn:
            # ids[0] re-archived meanwhile with another body (by a writer without a dictionary)...
            await conn.execute(
                update(responses)
                .where(responses.c.id == ids[0])
                .values(
                    raw=zstandard.ZstdCompressor().compress(other),
                    raw_codec="zstd",
                    raw_sha256=hashlib.sha256(other).hexdigest(),
                )
            )
            # ...and ids[1] re-encoded by `archiver compact`.
            await conn.execute(
                update(responses)
                .where(responses.c.id == ids[1])
                .values(raw=compacted, raw_codec="zstd+dict", raw_dict_id=dict_id)
            )
        async with engine.begin() as conn:
            await conn.run_sync(walk.write, planned)
        assert (walk.rewritten, walk.left_alone) == (10, 2)
        rows = await _rows(engine)
        assert rows[ids[0]].raw_codec == "zstd"
        assert bytes(rows[ids[1]].raw) == compacted
        assert {rows[rid].raw_codec for rid in ids[2:]} == {"zstd+dict"}
        async with engine.connect() as conn:
            bodies = await read_bodies(conn, ids)
    assert bodies == {ids[0]: other, **{rid: body_for(rid) for rid in ids[1:]}}


@pytest.mark.postgres
async def test_a_row_locked_by_another_transaction_is_skipped_not_waited_for(
    pg_url: str, make_settings: Any
) -> None:
    ids = [f"resp_ok_k{i:03d}" for i in range(6)]
    async with open_database(pg_url) as engine:
        walk = PlainWalk(await _plain_rows_and_a_dictionary(pg_url, make_settings, engine, ids))
        async with engine.connect() as writer:
            await writer.begin()  # a writer in the middle of re-archiving ids[2]
            await writer.execute(update(responses).where(responses.c.id == ids[2]).values(status="completed"))

            async def step() -> None:
                async with engine.begin() as conn:
                    await conn.run_sync(walk.step)

            await asyncio.wait_for(step(), timeout=20)
            await writer.rollback()
        rows = await _rows(engine)
        assert {rid: rows[rid].raw_codec for rid in ids} == {
            rid: "zstd" if rid == ids[2] else "zstd+dict" for rid in ids
        }
        async with engine.connect() as conn:
            assert await read_bodies(conn, ids) == {rid: body_for(rid) for rid in ids}


_KILLED_WALK = textwrap.dedent(
    """
    import asyncio, sys, time
    from archiver import reencode
    from archiver.codec import Codec
    from archiver.db import open_database
    from archiver.dictionaries import load_dictionaries

    reencode.REENCODE_BATCH = 4
    write = reencode.PlainWalk.write

    def write_then_hang(self, conn, planned):
        write(self, conn, planned)
        if self.rewritten > 4:  # the second step's updates are made, not committed
            print("updated", flush=True)
            time.sleep(60)

    reencode.PlainWalk.write = write_then_hang

    async def main():
        async with open_database(sys.argv[1]) as engine:
            async with engine.connect() as conn:
                walk = reencode.PlainWalk(Codec(await load_dictionaries(conn)))
            while not walk.done:
                async with engine.begin() as conn:
                    await conn.run_sync(walk.step)
                print("committed", flush=True)

    asyncio.run(main())
    """
)


async def test_a_writer_killed_in_the_middle_leaves_every_body_readable(
    db_url: str, make_settings: Any
) -> None:
    ids = [f"resp_ok_c{i:03d}" for i in range(12)]
    async with open_database(db_url) as engine:
        await _plain_rows_and_a_dictionary(db_url, make_settings, engine, ids)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARCHIVER_")}
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _KILLED_WALK, db_url, stdout=subprocess.PIPE, cwd=REPO, env=env
    )
    assert child.stdout is not None
    lines = [(await asyncio.wait_for(child.stdout.readline(), 60)).decode().strip() for _ in range(2)]
    assert lines == ["committed", "updated"]
    child.send_signal(signal.SIGKILL)
    await child.wait()
    async with open_database(db_url) as engine:
        rows = await _rows(engine)
        # The first step is committed; the second was rolled back with the process.
        assert sorted(rid for rid in ids if rows[rid].raw_codec == "zstd+dict") == ids[:4]
        async with engine.connect() as conn:
            assert await read_bodies(conn, ids) == {rid: body_for(rid) for rid in ids}
        walk = PlainWalk(Codec({row.id: bytes(row.data) for row in await _dictionaries(engine)}))
        while not walk.done:  # a later walk (or compact) finishes the job
            async with engine.begin() as conn:
                await conn.run_sync(walk.step)
        assert walk.rewritten == 8
        async with engine.connect() as conn:
            assert await read_bodies(conn, ids) == {rid: body_for(rid) for rid in ids}


def _random_body(rid: str) -> bytes:
    payload = base64.b64encode(os.urandom(8000)).decode()
    return orjson.dumps(
        {"id": rid, "object": "response", "status": "completed", "output": [], "blob": payload}
    )


async def test_a_dictionary_that_does_not_help_is_not_kept(
    sqlite_url: str, make_settings: Any, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    bodies_dir = tmp_path / "bodies"
    bodies_dir.mkdir()
    ids = [f"rand-{i:04d}" for i in range(codec.FIRST_TRAINING_AT + 20)]
    for rid in ids:
        (bodies_dir / f"{rid}.json").write_bytes(_random_body(rid))
    config = MockConfig(bodies_dir=bodies_dir, bodies_only=True)
    async with await start_mock_server(config) as mock, open_database(sqlite_url) as engine:
        await _archive(make_settings(sqlite_url, mock.base_url), engine, ids)
        assert await _dictionaries(engine) == []
        assert {row.raw_codec for row in (await _rows(engine)).values()} == {"zstd"}
    assert "archiver.dictionary_not_kept" in capfd.readouterr().err


async def test_a_walk_never_writes_with_a_dictionary_the_database_does_not_hold(
    sqlite_url: str, make_settings: Any
) -> None:
    ids = [f"resp_ok_m{i:03d}" for i in range(5)]
    async with open_database(sqlite_url) as engine:
        encoder = await _plain_rows_and_a_dictionary(sqlite_url, make_settings, engine, ids)
        async with engine.begin() as conn:
            await conn.execute(archive_dictionaries.delete())
        walk = PlainWalk(encoder)
        async with engine.begin() as conn:
            await conn.run_sync(walk.step)
        assert walk.done and walk.rewritten == 0
        assert {row.raw_codec for row in (await _rows(engine)).values()} == {"zstd"}


async def test_a_training_that_does_not_commit_leaves_no_dictionary_in_use(
    sqlite_url: str, make_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    trained: list[int] = []
    walk_plain_rows = WritingCodec._walk_plain_rows

    def fail_the_first(writing_codec: WritingCodec, conn: Any, dict_id: int) -> None:
        trained.append(dict_id)
        if len(trained) == 1:  # after the dictionary's INSERT, before the COMMIT
            raise RuntimeError("the training transaction does not commit")
        walk_plain_rows(writing_codec, conn, dict_id)

    monkeypatch.setattr(WritingCodec, "_walk_plain_rows", fail_the_first)
    ids = [f"resp_ok_n{i:05d}" for i in range(codec.FIRST_TRAINING_AT + 150)]
    async with await start_mock_server() as mock, open_database(sqlite_url) as engine:
        # Batches of at most 50: the failed training comes by the 177th body at the latest,
        # so at least two batches follow it whatever the load (one batch of all 278 once
        # left nothing after the failure to train again).
        await _archive(make_settings(sqlite_url, mock.base_url, writer="inline", batch_size=50), engine, ids)
        dictionaries = await _dictionaries(engine)
        rows = await _rows(engine)
        async with engine.connect() as conn:
            bodies = await read_bodies(conn, ids)
    # The writer trained again (its dictionary went with the rollback), and wrote nothing
    # with the one that was rolled back: every body reads back.
    assert len(trained) == 2 and [d.id for d in dictionaries] == trained[1:]
    assert {row.raw_dict_id for row in rows.values()} <= {None, trained[1]}
    assert bodies == {rid: body_for(rid) for rid in ids}


@pytest.mark.parametrize("writer", ["inline", "process"])
async def test_a_training_that_fails_after_its_batch_committed_fails_nothing(
    sqlite_url: str, make_settings: Any, writer: str
) -> None:
    """A database error in the training (here a trigger refusing the dictionary's INSERT)
    comes after the batch committed: the batch stands, once; the training is tried again."""
    ids = [f"resp_ok_f{i:05d}" for i in range(codec.FIRST_TRAINING_AT + 100)]
    async with await start_mock_server() as mock, open_database(sqlite_url) as engine:
        async with engine.begin() as conn:
            await conn.exec_driver_sql(
                "CREATE TRIGGER refuse_dictionaries BEFORE INSERT ON archive_dictionaries "
                "BEGIN SELECT RAISE(ABORT, 'no dictionaries today'); END"
            )
        await QueueStore(engine).enqueue(ids)
        worker = Worker(make_settings(sqlite_url, mock.base_url, writer=writer), engine, once=True)
        await worker.run()
        assert worker.summary.archived == len(ids), worker.summary
        assert worker.summary.lost_lease == 0
        assert await QueueStore(engine).counts() == {
            "pending": 0,
            "in_flight": 0,
            "archived": len(ids),
            "not_found": 0,
            "failed": 0,
        }
        assert len(mock.stats.requests_by_id) == len(ids) and set(mock.stats.requests_by_id.values()) == {1}
        assert await _dictionaries(engine) == []
        async with engine.connect() as conn:
            assert await read_bodies(conn, ids) == {rid: body_for(rid) for rid in ids}

        # Once the database takes dictionaries again, the next batch trains one.
        async with engine.begin() as conn:
            await conn.exec_driver_sql("DROP TRIGGER refuse_dictionaries")
        more = [f"resp_ok_g{i:03d}" for i in range(50)]
        await _archive(make_settings(sqlite_url, mock.base_url, writer=writer), engine, more)
        assert len(await _dictionaries(engine)) == 1
