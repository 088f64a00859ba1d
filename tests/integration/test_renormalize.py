"""renormalize: the normalized rows rebuilt from raw, byte-exact bodies, modes, resuming, fencing."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text, update

from archiver.commands import show
from archiver.db import open_database
from archiver.errors import ConfigError
from archiver.mockapi import MockConfig, load_bodies, start_mock_server
from archiver.projection import (
    PROJECTION_TABLES,
    SUMMARY_TABLES,
    NormalizeModeMismatch,
    archive_mode_sync,
    read_meta_sync,
    settle_mode_sync,
)
from archiver.queue import QueueStore
from archiver.rebuild import Rebuilder
from archiver.renormalize import POSITION_KEY, renormalize
from archiver.schema import responses
from archiver.worker import Worker

pytestmark = pytest.mark.timeout(240)

NOT_PROJECTED = ("change_seq", "raw", "raw_codec", "raw_dict_id")


async def projection(engine: Any) -> dict[str, list[tuple[Any, ...]]]:
    """Every normalized row (without change_seq and the stored body), in key order."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    async with engine.connect() as conn:
        for table in (responses, *PROJECTION_TABLES):
            # As the driver returns them: SQLite gives a JSON scalar column back as a number.
            columns = ", ".join(f'"{c.name}"' for c in table.c if c.name not in NOT_PROJECTED)
            keys = ", ".join(f'"{c.name}"' for c in table.primary_key.columns)
            rows = await conn.exec_driver_sql(f"SELECT {columns} FROM {table.name} ORDER BY {keys}")
            out[table.name] = [tuple(row) for row in rows]
    return out


async def assert_consistent(engine: Any) -> None:
    """Every child row belongs to a response and carries its change_seq."""
    async with engine.connect() as conn:
        for table in PROJECTION_TABLES:
            bad = (
                await conn.execute(
                    text(
                        f"SELECT count(*) FROM {table.name} AS c LEFT JOIN responses AS r "
                        "ON r.id = c.response_id WHERE r.id IS NULL OR r.change_seq <> c.change_seq"
                    )
                )
            ).scalar()
            assert bad == 0, table.name


async def archive_corpus(db_url: str, engine: Any, make_settings: Any, corpus_dir: Path) -> dict[str, bytes]:
    bodies = load_bodies(corpus_dir)
    async with await start_mock_server(MockConfig(bodies_dir=corpus_dir, bodies_only=True)) as mock:
        await QueueStore(engine).enqueue(sorted(bodies))
        # max_polls=1: the corpus has an in_progress snapshot; it is archived at once.
        await Worker(make_settings(db_url, mock.base_url, max_polls=1), engine, once=True).run()
    async with engine.connect() as conn:
        archived = set((await conn.execute(select(responses.c.id))).scalars())
    assert len(archived) >= len(bodies) - 5
    return {rid: body for rid, body in bodies.items() if rid in archived}


async def damage(engine: Any) -> None:
    """What an older normalization might have left: child rows missing, columns unmapped."""
    async with engine.begin() as conn:
        for table in PROJECTION_TABLES:
            await conn.execute(table.delete())
        await conn.execute(update(responses).values(model="old", extra=None, status=None, tool_set_id=None))


async def test_renormalize_rebuilds_every_row_and_switches_modes(
    db_url: str, make_settings: Any, corpus_dir: Path
) -> None:
    settings = make_settings(db_url)
    async with open_database(db_url) as engine:
        bodies = await archive_corpus(db_url, engine, make_settings, corpus_dir)
        expected = await projection(engine)
        assert sum(len(rows) for rows in expected.values()) > 3 * len(bodies)
        async with engine.connect() as conn:
            seq_before = (await conn.execute(select(func.max(responses.c.change_seq)))).scalar()
        await damage(engine)
        assert await projection(engine) != expected

        result = await renormalize(engine, everything=True, batch_size=17)
        assert result.report.rewritten == result.report.done == len(bodies), result.as_dict()
        assert result.report.failed == result.report.skipped == 0
        assert await projection(engine) == expected
        await assert_consistent(engine)
        async with engine.connect() as conn:
            assert (await conn.execute(select(func.min(responses.c.change_seq)))).scalar() > seq_before
            assert await conn.run_sync(read_meta_sync, POSITION_KEY) is None

        # summary keeps the responses row and the usage rows only; the mode is recorded.
        result = await renormalize(engine, everything=True, mode="summary")
        assert (result.mode, result.switched_from) == ("summary", "full")
        summary = await projection(engine)
        for name, rows in summary.items():
            kept = name == "responses" or name in SUMMARY_TABLES
            assert rows == (expected[name] if kept else []), name
        assert expected["billing_details"] and expected["tool_usage"]
        async with engine.begin() as conn:
            assert await conn.run_sync(archive_mode_sync) == "summary"
            with pytest.raises(NormalizeModeMismatch, match="renormalize --all --normalize full"):
                await conn.run_sync(settle_mode_sync, "full")
        with pytest.raises(ConfigError, match="use --all"):
            await renormalize(engine, ids=[sorted(bodies)[0]], mode="full")

        await renormalize(engine, everything=True, mode="full")
        assert await projection(engine) == expected
        await assert_consistent(engine)
    for rid, body in bodies.items():
        assert await show(settings, rid) == body, rid


async def test_a_summary_archive_is_written_in_summary_mode(sqlite_url: str, make_settings: Any) -> None:
    ids = [f"resp_kitchensink_s{i}" for i in range(5)] + [f"resp_ok_s{i}" for i in range(5)]
    async with await start_mock_server() as mock, open_database(sqlite_url) as engine:
        async with engine.begin() as conn:
            assert await conn.run_sync(settle_mode_sync, "summary") == "summary"  # a new archive takes it
        await QueueStore(engine).enqueue(ids)
        await Worker(make_settings(sqlite_url, mock.base_url), engine, once=True).run()
        rows = await projection(engine)
        async with engine.begin() as conn:
            assert await conn.run_sync(settle_mode_sync, None) == "summary"
        # Converting to full rebuilds the child rows from raw.
        await renormalize(engine, everything=True, mode="full")
        full = await projection(engine)
    assert len(rows["responses"]) == len(ids) and rows["billing_details"]
    for name in rows:
        if name != "responses" and name not in SUMMARY_TABLES:
            assert rows[name] == [], name
    assert (
        full["output_items"] and full["content_parts"] and full["billing_details"] == rows["billing_details"]
    )


async def test_an_interrupted_renormalize_resumes_after_its_last_batch(
    sqlite_url: str, make_settings: Any, corpus_dir: Path
) -> None:
    async with open_database(sqlite_url) as engine:
        bodies = await archive_corpus(sqlite_url, engine, make_settings, corpus_dir)
        expected = await projection(engine)
        await damage(engine)
        batches = 0

        def crash_after_three(_report: Any) -> None:
            nonlocal batches
            batches += 1
            if batches == 3:
                raise KeyboardInterrupt  # as Ctrl-C or a kill would, between two batches

        with pytest.raises(KeyboardInterrupt):
            await renormalize(engine, since="1d", batch_size=10, on_batch=crash_after_three)
        async with engine.connect() as conn:
            saved = await conn.run_sync(read_meta_sync, POSITION_KEY)
        assert saved is not None and '"scope": "since"' in saved
        # Another scope does not resume it...
        other = await renormalize(engine, ids=[sorted(bodies)[0]])
        assert other.resumed_after is None
        # ...the same command does, after the 30 responses committed.
        result = await renormalize(engine, since="1d", batch_size=10)
        assert result.resumed_after == sorted(bodies)[29]
        assert result.report.total == result.report.done == len(bodies) - 30
        assert await projection(engine) == expected
        async with engine.connect() as conn:
            assert await conn.run_sync(read_meta_sync, POSITION_KEY) is None


@pytest.mark.parametrize("when", ["after_listing", "after_reading"])
async def test_a_response_re_archived_meanwhile_is_not_overwritten(
    db_url: str, make_settings: Any, corpus_dir: Path, when: str
) -> None:
    async with open_database(db_url) as engine:
        bodies = await archive_corpus(db_url, engine, make_settings, corpus_dir)
        await damage(engine)
        victim = sorted(bodies)[3]

        async def daemon_rewrites_the_victim() -> None:
            # What the daemon's writer does when it archives newer bytes: new raw, new hash,
            # a new change_seq.
            async with engine.begin() as conn:
                await conn.execute(
                    update(responses)
                    .where(responses.c.id == victim)
                    .values(change_seq=responses.c.change_seq + 1000, model="newer", raw_sha256="0" * 64)
                )

        class DaemonMeanwhile(Rebuilder):
            async def _candidates(self, where: Any, after: str) -> Any:
                listed = await super()._candidates(where, after)
                if when == "after_listing" and any(c.response_id == victim for c in listed):
                    await daemon_rewrites_the_victim()
                return listed

            async def _read(self, piece: Any) -> Any:
                read = await super()._read(piece)
                if when == "after_reading" and any(c.response_id == victim for c in piece):
                    await daemon_rewrites_the_victim()
                return read

        report = await DaemonMeanwhile(engine, batch_size=10, max_batch_bytes=1 << 20).walk(
            responses.c.id.in_(sorted(bodies))
        )
        assert (report.skipped, report.failed, report.rewritten) == (1, 0, len(bodies) - 1)
        async with engine.connect() as conn:
            model = (await conn.execute(select(responses.c.model).where(responses.c.id == victim))).scalar()
        assert model == "newer"  # the newer write stands


async def test_renormalize_ids_reports_the_ones_not_archived(sqlite_url: str, make_settings: Any) -> None:
    async with await start_mock_server() as mock, open_database(sqlite_url) as engine:
        await QueueStore(engine).enqueue(["resp_ok_a1", "resp_ok_a2"])
        await Worker(make_settings(sqlite_url, mock.base_url), engine, once=True).run()
        result = await renormalize(engine, ids=["resp_ok_a2", "resp_missing", "resp_ok_a1"])
        assert result.missing == ("resp_missing",)
        assert result.report.rewritten == 2
        # A body whose bytes no longer match raw_sha256 is left exactly as it is.
        async with engine.begin() as conn:
            await conn.execute(
                update(responses)
                .where(responses.c.id == "resp_ok_a1")
                .values(raw=b"{}", raw_codec="identity")
            )
            await conn.execute(text("DELETE FROM output_items WHERE response_id = 'resp_ok_a1'"))
        result = await renormalize(engine, ids=["resp_ok_a1", "resp_ok_a2"])
        assert (result.report.failed, result.report.rewritten) == (1, 1)
        assert result.report.failures == [("resp_ok_a1", "raw does not match its raw_sha256: left as it is")]
        rows = await projection(engine)
    assert [r for r in rows["output_items"] if r[0] == "resp_ok_a1"] == []


async def test_since_picks_the_responses_archived_since_then(sqlite_url: str, make_settings: Any) -> None:
    ids = [f"resp_ok_t{i}" for i in range(6)]
    async with await start_mock_server() as mock, open_database(sqlite_url) as engine:
        await QueueStore(engine).enqueue(ids)
        await Worker(make_settings(sqlite_url, mock.base_url), engine, once=True).run()
        async with engine.begin() as conn:
            old = datetime(2026, 1, 1, tzinfo=UTC)
            await conn.execute(
                update(responses)
                .where(responses.c.id.in_(["resp_ok_t1", "resp_ok_t4"]))
                .values(archived_at=old)
            )
        result = await renormalize(engine, since="7d")
        assert result.report.total == result.report.rewritten == 4
        result = await renormalize(engine, since="2025-12-31")
        assert result.report.total == 6


async def test_an_archive_built_by_an_older_projection_is_told_to_renormalize(
    sqlite_url: str, make_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from archiver import projection
    from archiver.commands import _check_projection, format_status, status

    async with await start_mock_server() as mock, open_database(sqlite_url) as engine:
        await _check_projection(engine)  # a new archive records the version that writes it
        async with engine.connect() as conn:
            assert await conn.run_sync(read_meta_sync, projection.PROJECTION_KEY) == str(
                projection.PROJECTION_VERSION
            )
        newer = projection.PROJECTION_VERSION + 1
        await QueueStore(engine).enqueue(["resp_ok_v1", "resp_ok_v2"])
        await Worker(make_settings(sqlite_url, mock.base_url), engine, once=True).run()
        monkeypatch.setattr(projection, "PROJECTION_VERSION", newer)  # a release that maps more
        details = await status(make_settings(sqlite_url))
        assert details["archive"]["renormalize_needed"] is True
        assert "run `archiver renormalize --all`" in format_status(details)
        await renormalize(engine, ids=["resp_ok_v1", "resp_ok_v2"])  # not every response: still needed
        assert (await status(make_settings(sqlite_url)))["archive"]["renormalize_needed"] is True
        await renormalize(engine, everything=True)
        details = await status(make_settings(sqlite_url))
    assert details["archive"] == {
        "normalize": "full",
        "projection_version": newer,
        "projection_current": newer,
        "renormalize_needed": False,
        "renormalize_unfinished": None,
    }
    assert "normalize mode: full" in format_status(details) and "older archiver" not in format_status(details)


async def test_input_items_are_kept_in_both_modes_and_follow_change_seq(
    db_url: str, make_settings: Any
) -> None:
    from archiver.schema import input_items

    ids = ["resp_ok_i1", "resp_kitchensink_i2"]
    async with await start_mock_server() as mock, open_database(db_url) as engine:
        await QueueStore(engine).enqueue(ids)
        await Worker(make_settings(db_url, mock.base_url, with_input_items=True), engine, once=True).run()
        async with engine.connect() as conn:
            before = (await conn.execute(select(func.count()).select_from(input_items))).scalar()
        assert before
        for mode in ("summary", "full"):
            await renormalize(engine, everything=True, mode=mode)
            async with engine.connect() as conn:
                stale = await conn.execute(
                    text(
                        "SELECT count(*) FROM input_items AS i JOIN responses AS r ON r.id = i.response_id "
                        "WHERE r.change_seq <> i.change_seq"
                    )
                )
                assert stale.scalar() == 0
                assert (await conn.execute(select(func.count()).select_from(input_items))).scalar() == before


async def test_a_key_echoed_in_a_body_stays_in_raw_only_after_renormalize(
    sqlite_url: str, make_settings: Any, tmp_path: Path
) -> None:
    import secrets

    import orjson

    from archiver.redaction import register_secret

    canary = "sk-canary-" + secrets.token_hex(12)
    body = orjson.dumps(
        {
            "id": "resp_echo_r1",
            "object": "response",
            "status": "completed",
            "model": "m",
            "output": [
                {
                    "type": "message",
                    "id": "msg_1",
                    "role": "assistant",
                    "status": "completed",
                    "content": [{"type": "output_text", "text": f"your key is {canary}.", "annotations": []}],
                }
            ],
        }
    )
    bodies = tmp_path / "bodies"
    bodies.mkdir()
    (bodies / "echo.json").write_bytes(body)
    config = MockConfig(bodies_dir=bodies, bodies_only=True)
    async with await start_mock_server(config) as mock, open_database(sqlite_url) as engine:
        await QueueStore(engine).enqueue(["resp_echo_r1"])
        await Worker(make_settings(sqlite_url, mock.base_url), engine, once=True).run()
        rows = await projection(engine)
        assert any(canary in str(row) for row in rows["content_parts"])  # not registered then
        register_secret(canary)  # this process knows the key (renormalize gets the daemon's env)
        result = await renormalize(engine, everything=True)
        rows = await projection(engine)
    assert result.report.rewritten == 1
    assert not any(canary in str(row) for table in rows.values() for row in table)
    assert await show(make_settings(sqlite_url), "resp_echo_r1") == body  # raw stays byte-exact
