"""Hostile tests of issue 17's rebuilds and codec as a careless operator runs them:
``renormalize`` interrupted and run again with another mode, ``--since`` values outside
the calendar, and stored bodies damaged on disk (bit rot, a bad restore, an edited row).

Each test here reproduces a fault found by hand against real databases.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import pytest
import zstandard
from sqlalchemy import select, text, update

from archiver.commands import show
from archiver.db import open_database
from archiver.errors import ArchiverError, ConfigError
from archiver.export import export
from archiver.mockapi import body_for, start_mock_server
from archiver.projection import PROJECTION_TABLES, SUMMARY_TABLES
from archiver.queue import QueueStore
from archiver.renormalize import check_scope, renormalize
from archiver.schema import archive_dictionaries, responses
from archiver.worker import Worker
from tests.integration.test_renormalize import assert_consistent, projection

pytestmark = pytest.mark.timeout(180)


@pytest.mark.parametrize(
    "since",
    [
        "99999999999999999999d",  # more seconds than a C int
        "100000000w",  # before year 1
        "0001-01-01T00:00:00+01:00",  # year 0 once in UTC
        "9999-12-31T23:59:59-05:00",  # year 10000 once in UTC
    ],
)
def test_a_since_outside_the_calendar_is_a_bad_value_not_a_traceback(since: str) -> None:
    """Found: an OverflowError traceback (exit 1) from ``renormalize --since``."""
    with pytest.raises(ConfigError, match="--since"):
        check_scope((), everything=False, since=since)


async def _archive(db_url: str, make_settings: Any, engine: Any, ids: list[str]) -> None:
    async with await start_mock_server() as mock:
        await QueueStore(engine).enqueue(ids)
        await Worker(make_settings(db_url, mock.base_url), engine, once=True).run()


class Interrupt(Exception):
    """Ctrl-C, a kill or a crash between two batches (the position of the last one is saved)."""


def _stop_after_first_batch(_report: Any) -> None:
    raise Interrupt


@pytest.mark.parametrize("first", ["full", "summary"])
async def test_switching_modes_after_an_interrupted_renormalize_converts_every_response(
    db_url: str, make_settings: Any, first: str
) -> None:
    """Found: ``renormalize --all --normalize M`` resumed the unfinished ``--all`` of the other
    mode, so the responses of its committed batches kept the other mode's rows for good (10 of
    30 with full child rows in a summary archive, or with none in a full one), and nothing
    (status, a later run) said so."""
    ids = [f"resp_kitchensink_w{i:02d}" for i in range(30)]
    other = "summary" if first == "full" else "full"
    async with open_database(db_url) as engine:
        await _archive(db_url, make_settings, engine, ids)
        full = await projection(engine)
        await renormalize(engine, everything=True, mode=first)
        with pytest.raises(Interrupt):  # half way through the first conversion (or rebuild)
            await renormalize(engine, everything=True, batch_size=10, on_batch=_stop_after_first_batch)
        result = await renormalize(engine, everything=True, mode=other, batch_size=10)
        assert result.switched_from == first and result.resumed_after is None, result.lines()
        assert result.report.done == len(ids)
        rows = await projection(engine)
        await assert_consistent(engine)
    for table in PROJECTION_TABLES:
        kept = other == "full" or table.name in SUMMARY_TABLES
        assert rows[table.name] == (full[table.name] if kept else []), table.name


def _damage(stored: bytes, dict_data: bytes | None, sha: str, *, silent: bool) -> bytes:
    """``stored`` with one byte changed so that zstd decodes it to other bytes (``silent``) or fails."""
    dictionary = zstandard.ZstdCompressionDict(dict_data) if dict_data else None
    reader = zstandard.ZstdDecompressor(dict_data=dictionary) if dictionary else zstandard.ZstdDecompressor()
    for pos in range(12, len(stored)):
        damaged = bytearray(stored)
        damaged[pos] ^= 0x20
        try:
            decoded = reader.decompress(bytes(damaged))
        except zstandard.ZstdError:
            if not silent:
                return bytes(damaged)
            continue
        if silent and hashlib.sha256(decoded).hexdigest() != sha:
            return bytes(damaged)
    raise AssertionError("no such byte")


async def test_a_damaged_stored_body_is_never_shown_or_exported_as_the_body(
    db_url: str, make_settings: Any, tmp_path: Path
) -> None:
    """Found: a stored body damaged on disk (one byte) was shown and exported as if received
    (exit 0: zstd frames carry no checksum and nothing compared the result with ``raw_sha256``;
    736 of 1,226 one-byte changes of 60 bodies, and 15 of 450 bodies after one byte of their
    dictionary changed), or failed ``show`` and the whole export with a ZstdError traceback."""
    ids = [f"resp_ok_d{i:03d}" for i in range(150)]  # enough to train the first dictionary
    quiet, loud = ids[10], ids[20]
    async with open_database(db_url) as engine:
        await _archive(db_url, make_settings, engine, ids)
        async with engine.begin() as conn:
            r = responses.c
            stored = {
                row.id: row
                for row in await conn.execute(
                    select(r.id, r.raw, r.raw_codec, r.raw_dict_id, r.raw_sha256).where(
                        r.id.in_([quiet, loud])
                    )
                )
            }
            assert stored[quiet].raw_codec == "zstd+dict", stored[quiet]
            dict_data = (
                await conn.execute(
                    select(archive_dictionaries.c.data).where(
                        archive_dictionaries.c.id == stored[quiet].raw_dict_id
                    )
                )
            ).scalar()
            for rid, silent in ((quiet, True), (loud, False)):
                row = stored[rid]
                damaged = _damage(bytes(row.raw), bytes(dict_data), row.raw_sha256, silent=silent)
                await conn.execute(update(responses).where(r.id == rid).values(raw=damaged))
        settings = make_settings(db_url)
        for rid in (quiet, loud):
            with pytest.raises(ArchiverError, match=rf"{rid}.*damaged"):
                await show(settings, rid)
        assert await show(settings, ids[0]) == body_for(ids[0])  # the others stay readable
        for fmt in ("jsonl", "csv", "parquet"):
            with pytest.raises(ArchiverError, match="damaged"):
                await export(engine, tmp_path / fmt, fmt=fmt, full=True)  # type: ignore[arg-type]
        # renormalize names both and leaves them as they are.
        result = await renormalize(engine, ids=[quiet, loud, ids[0]])
        assert result.report.failed == 2 and result.report.rewritten == 1
        # README's way back: mark the row, fetch it again (the same bytes are no longer "unchanged").
        async with engine.begin() as conn:
            await conn.execute(text(f"UPDATE responses SET raw_sha256 = 'damaged' WHERE id = '{loud}'"))
        async with await start_mock_server() as mock:
            await QueueStore(engine).enqueue([loud], refetch=True)
            await Worker(make_settings(db_url, mock.base_url), engine, once=True).run()
        assert await show(settings, loud) == body_for(loud)


async def test_compact_converts_the_bodies_a_renormalize_rewrote_while_it_read_them(
    db_url: str, make_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found: with ``renormalize --all`` running beside it, compact skipped every response
    renormalize rewrote between its read and its write ("re-archived meanwhile", though
    their ``raw`` was the old one), left those bodies stored as received and said it had
    compacted everything (exit 0; 27 of 3,150 bodies in a run on SQLite with a daemon)."""
    from archiver import compact as compact_module
    from archiver.rebuild import Rebuilder
    from tests.integration.test_compact import archive_old, codecs

    async with open_database(db_url) as engine:
        bodies = await archive_old(db_url, engine, make_settings, None, count=200)
        listed = Rebuilder._candidates
        renormalized: list[str] = []

        async def renormalize_meanwhile(self: Rebuilder, where: Any, after: str) -> Any:
            candidates = await listed(self, where, after)
            if candidates and not renormalized:  # the first batch, as renormalize --all would
                renormalized.extend(c.response_id for c in candidates[:7])
                await renormalize(engine, ids=renormalized)
            return candidates

        monkeypatch.setattr(compact_module.Rebuilder, "_candidates", renormalize_meanwhile)
        result = await compact_module.compact(engine, batch_size=50)
        found = await codecs(engine)
        await assert_consistent(engine)
    assert len(renormalized) == 7
    assert found == {"zstd+dict": len(bodies)}, (found, result.lines())
    assert result.report.rewritten == len(bodies) and result.report.skipped == 0, result.as_dict()


CANARY = "Qx7-canary/9Lp3+Vb2mNw6"
"""An API key of no known shape (no ``sk-``): only its registration can mask it."""


async def test_a_renormalize_without_the_daemons_key_leaves_its_echoes_masked(
    sqlite_url: str, make_settings: Any, tmp_path: Path
) -> None:
    """Found: the daemon masks a key the server echoed into a body; ``archiver renormalize
    --all`` from a shell without the daemon's key variables wrote it back, unmasked, into
    ``content_parts.text`` (and so into every export). Fixed on main (09f9577,
    ``responses.secret_masked``): the rebuild leaves such a response as it is and names it."""
    import sys

    from aiohttp import web

    from archiver.redaction import register_secret
    from tests.acceptance.conftest import base_env
    from tests.loopback import serving

    rid = "resp_echo_careless"

    async def answer(request: web.Request) -> web.Response:
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        part = {"type": "output_text", "text": f"you sent {key}", "annotations": []}
        item = {"type": "message", "id": "m1", "role": "assistant", "status": "completed", "content": [part]}
        body = {"id": rid, "object": "response", "status": "completed", "model": "m", "output": [item]}
        return web.json_response(body)

    app = web.Application()
    app.router.add_get("/v1/responses/{rid}", answer)
    register_secret(CANARY)  # the daemon's process knows its key
    async with serving(app) as origin, open_database(sqlite_url) as engine:
        await QueueStore(engine).enqueue([rid])
        await Worker(make_settings(sqlite_url, f"{origin}/v1", api_key=CANARY), engine, once=True).run()
        async with engine.connect() as conn:
            texts = list((await conn.execute(text("SELECT text FROM content_parts"))).scalars())
        assert texts == ["you sent ***"]

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "archiver", "renormalize", "--all", "--database-url", sqlite_url),
        env=base_env(),  # an operator's shell: no ARCHIVER_API_KEY, no key file
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1 and f"{rid} not renormalized".encode() in err, (out, err)
    async with open_database(sqlite_url) as engine, engine.connect() as conn:
        texts = list((await conn.execute(text("SELECT text FROM content_parts"))).scalars())
    assert CANARY.encode() not in out + err
    assert not any(CANARY in t for t in texts), texts


def _old_rows(count: int) -> list[dict[str, Any]]:
    """Small responses as archiver wrote them before compressed raw (``raw_codec`` NULL)."""
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    rows = []
    for i in range(count):
        rid = f"resp_p{i:05d}"
        body = b'{"id":"%s","object":"response","status":"completed","output":[]}' % rid.encode()
        sha = hashlib.sha256(body).hexdigest()
        rows.append(
            {"id": rid, "status": "completed", "raw": body, "raw_sha256": sha, "change_seq": i + 1}
            | {"fetched_at": now, "archived_at": now}
        )
    return rows


async def test_a_rebuild_batch_larger_than_postgresqls_parameter_limit(pg_url: str) -> None:
    """Found: ``--batch-size`` accepts up to 100,000, but on PostgreSQL a renormalize or compact
    batch of more than 32,767 responses failed the whole command at its first batch ("the
    number of query arguments cannot exceed 32767": the batch's IDs in one ``IN`` list).
    compact re-encodes, then rebuilds through the Rebuilder renormalize uses (renormalize
    of the same batch took 7 more seconds and reads nothing compact does not)."""
    from archiver.compact import compact

    count = 32_800
    async with open_database(pg_url) as engine:
        async with engine.begin() as conn:
            await conn.execute(responses.insert(), _old_rows(count))
        compacted = await compact(engine, batch_size=100_000, max_batch_bytes=1 << 40)
        assert compacted.report.rewritten == count, compacted.as_dict()


@pytest.mark.parametrize("read", ["_candidates", "_read"])
@pytest.mark.parametrize("command", ["renormalize", "compact"])
async def test_a_connection_the_server_ends_mid_read_is_retried(
    pg_url: str, command: str, read: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found: a PostgreSQL restart (a failover, a minor upgrade) while ``renormalize --all``
    read a batch ended it at once, exit 1 ("connection was closed in the middle of
    operation: terminating connection due to administrator command"), where the daemon
    beside it waits for the server: its writes were retried, its reads were not.

    The server ends the reading connection as a restart does (``pg_terminate_backend``),
    while the read waits on a lock held for the purpose, so the fault lands mid-read."""
    from archiver.compact import compact
    from archiver.db import create_engine
    from archiver.rebuild import Rebuilder

    count = 100
    original = getattr(Rebuilder, read)
    calls: list[int] = []

    async def terminated_once(self: Rebuilder, *args: Any) -> Any:
        calls.append(1)
        if len(calls) != 2:
            return await original(self, *args)
        side = create_engine(pg_url)
        try:
            async with side.connect() as lock:
                await lock.execute(text("LOCK TABLE responses IN ACCESS EXCLUSIVE MODE"))
                reading = asyncio.create_task(original(self, *args))
                async with side.connect() as admin:
                    for _ in range(200):  # until the read waits on the lock
                        waiting = await admin.execute(
                            text(
                                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                                "AND wait_event_type = 'Lock'"
                            )
                        )
                        pids = list(waiting.scalars())
                        if pids:
                            break
                        await asyncio.sleep(0.02)
                    assert pids, "the read never waited on the lock"
                    await admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pids[0]})
                await lock.rollback()
            return await reading
        finally:
            await side.dispose()

    monkeypatch.setattr(Rebuilder, read, terminated_once)
    async with open_database(pg_url) as engine:
        async with engine.begin() as conn:
            await conn.execute(responses.insert(), _old_rows(count))
        if command == "compact":
            report = (await compact(engine, batch_size=20)).report
        else:
            report = (await renormalize(engine, everything=True, batch_size=20)).report
    assert len(calls) > 2
    assert report.rewritten == count and report.failed == 0, report.as_dict()


async def test_the_responses_a_rebuild_leaves_as_they_were_are_named_in_its_notes(
    sqlite_url: str, make_settings: Any
) -> None:
    """Found: README says a body renormalize or compact cannot rebuild is "named on stderr", but
    only a log line named it: with ``ARCHIVER_LOG_LEVEL=error`` the operator got "failed 1",
    exit 1, and no ID."""
    from archiver.compact import compact

    ids = ["resp_ok_n1", "resp_ok_n2"]
    async with open_database(sqlite_url) as engine:
        await _archive(sqlite_url, make_settings, engine, ids)
        async with engine.begin() as conn:  # stored as received before 0008, and damaged
            await conn.execute(
                update(responses)
                .where(responses.c.id == ids[0])
                .values(raw=body_for(ids[0]), raw_codec=None, raw_sha256="0" * 64)
            )
        renormalized = await renormalize(engine, ids=ids)
        compacted = await compact(engine)
    for result in (renormalized, compacted):
        notes, _line = result.lines()
        assert result.report.failed == 1
        assert any(ids[0] in note and "raw_sha256" in note for note in notes), notes


@pytest.mark.parametrize("command", ["compact", "renormalize", "status", "show"])
async def test_a_command_that_creates_nothing_refuses_a_postgresql_database_without_an_archive(
    pg_url: str, make_settings: Any, command: str
) -> None:
    """Found: pointed at an empty PostgreSQL database (a mistyped name, or none at all:
    ``postgresql://host/`` means the ``postgres`` maintenance database), ``compact`` and
    ``renormalize --all`` installed the archive's 30 tables there and said "compacted 0 of 0
    responses", exit 0, as ``status`` and ``show`` did too; on SQLite the same mistake is
    "no archive at PATH", exit 1, and nothing is created."""
    from archiver import commands
    from archiver.errors import DatabaseUnavailable

    settings = make_settings(pg_url)
    calls = {
        "compact": lambda: commands.compact(settings, vacuum=False),
        "renormalize": lambda: commands.renormalize(settings, (), everything=True, since=None),
        "status": lambda: commands.status(settings),
        "show": lambda: commands.show(settings, "resp_x"),
    }
    with pytest.raises(DatabaseUnavailable, match="no archive in"):
        await calls[command]()
    async with open_database(pg_url, upgrade=False) as engine, engine.connect() as conn:
        tables = (
            await conn.execute(text("SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()"))
        ).scalar()
    assert tables == 0


async def test_daemons_starting_at_once_on_a_new_postgresql_archive_all_start(pg_url: str) -> None:
    """Found: of three ``archiver run`` started together on a new PostgreSQL archive
    (tests/acceptance/test_scale_out.py), one failed at once, exit 1: "duplicate key value
    violates unique constraint pk_archive_meta". Each records the projection version of a
    new archive as a delete and an insert; the second insert waits for the first commit,
    then fails. Two ``renormalize --all`` saving their position race the same way."""
    from archiver.projection import PROJECTION_KEY, record_projection_sync

    async with open_database(pg_url) as engine:
        async with engine.connect() as first, engine.connect() as second:
            await first.run_sync(lambda c: record_projection_sync(c, only_if_new=True))
            racing = asyncio.create_task(
                second.run_sync(lambda c: record_projection_sync(c, only_if_new=True))
            )
            await asyncio.sleep(0.5)  # the second insert waits on the first one's key
            await first.commit()
            await racing
            await second.commit()
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    text("SELECT value FROM archive_meta WHERE name = :n"), {"n": PROJECTION_KEY}
                )
            ).all()
    assert len(rows) == 1
