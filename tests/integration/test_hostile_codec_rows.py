"""How raw is stored, damaged by hand: a dictionary row set to text, an unknown ``raw_codec``.

Found: a dictionary whose ``data`` an operator set by hand to text (SQLite keeps the
storage class a value is given, whatever the column's type) broke every reader of
dictionaries. Valid UTF-8 text came back as a ``str``: ``show`` and ``renormalize``
ended with a ``TypeError`` traceback, and the daemon failed every ID it fetched
afterwards as "cannot store the response: TypeError". Other bytes could not be read at
all: the daemon retried for 10 s, its writer died and no ID was archived again. A
dictionary whose tables are damaged cannot compress: the daemon failed every ID it
fetched as "cannot store the response: ZstdError: cannot compress". And an
export stopped by a body in an encoding it does not know, or whose dictionary is
missing, did not say which response: ``archiver: error: unknown raw_codec 'brotli'``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import re
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from archiver.commands import show
from archiver.db import open_database
from archiver.errors import ArchiverError
from archiver.export import export
from archiver.mockapi import body_for, start_mock_server
from archiver.queue import QueueStore
from archiver.renormalize import renormalize
from archiver.worker import Worker
from tests.integration.test_hostile_rebuild import _archive

pytestmark = pytest.mark.timeout(120)

IDS = [f"resp_ok_h{i:03d}" for i in range(140)]  # enough to train the first dictionary


@pytest.mark.parametrize(
    "value",
    [
        "'not a dictionary'",
        "CAST(X'FF00FE80' AS TEXT)",
        "CAST(substr(data, 1, 100) || zeroblob(10) || substr(data, 111) AS BLOB)",  # its tables damaged
    ],
    ids=["utf8", "bytes", "zeroed"],
)
async def test_a_dictionary_set_to_text_by_hand_is_a_damaged_body_not_a_crash(
    value: str, sqlite_url: str, make_settings: Any, tmp_path: Path
) -> None:
    async with open_database(sqlite_url) as engine:
        await _archive(sqlite_url, make_settings, engine, IDS)
        async with engine.begin() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM archive_dictionaries"))).scalar() == 1
            await conn.execute(text(f"UPDATE archive_dictionaries SET data = {value}"))
        with pytest.raises(ArchiverError, match=rf"the stored body of {IDS[0]} is damaged"):
            await show(make_settings(sqlite_url), IDS[0])
        with pytest.raises(ArchiverError, match="damaged"):
            await export(engine, tmp_path / "out", fmt="jsonl", full=True)
        result = await renormalize(engine, ids=IDS[:3])
        assert (result.report.failed, result.report.rewritten) == (3, 0)
        # The daemon goes on: a new body is written with the (damaged) newest dictionary
        # and reads back byte-exact with it.
        await _archive(sqlite_url, make_settings, engine, ["resp_ok_after"])
        async with engine.connect() as conn:
            state, error = (
                await conn.execute(
                    text("SELECT state, last_error FROM archive_queue WHERE id = 'resp_ok_after'")
                )
            ).one()
        assert (state, error) == ("archived", None)
    assert await show(make_settings(sqlite_url), "resp_ok_after") == body_for("resp_ok_after")


@pytest.mark.parametrize(
    "damage",
    ["UPDATE responses SET raw_codec = 'brotli' WHERE id = :rid", "DELETE FROM archive_dictionaries"],
    ids=["unknown-codec", "missing-dictionary"],
)
async def test_an_export_stopped_by_a_body_it_cannot_decode_names_the_response(
    damage: str, db_url: str, make_settings: Any, tmp_path: Path
) -> None:
    async with open_database(db_url) as engine:
        await _archive(db_url, make_settings, engine, IDS)
        async with engine.begin() as conn:
            await conn.execute(text(damage), {"rid": IDS[7]} if ":rid" in damage else {})
        with pytest.raises(ArchiverError) as caught:
            await export(engine, tmp_path / "out", fmt="jsonl", full=True)
    assert "the stored body of resp_ok_h" in str(caught.value), caught.value


def documented_reader() -> str:
    """The Python snippet of docs/schema.md ("`raw` storage") that reads one body."""
    doc = (Path(__file__).parents[2] / "docs" / "schema.md").read_text(encoding="utf-8")
    start = doc.index("```python\nimport hashlib") + len("```python\n")
    return doc[start : doc.index("```", start)]


async def test_the_documented_way_to_read_a_body_reads_each_encoding_on_each_database(
    db_url: str, make_settings: Any
) -> None:
    """docs/schema.md's snippet, run as written on SQLite; on PostgreSQL its two queries
    with the placeholder the doc names for asyncpg."""
    snippet = documented_reader()
    async with open_database(db_url) as engine:
        await _archive(db_url, make_settings, engine, IDS)
        async with engine.begin() as conn:  # one row as archived before migration 0008
            await conn.execute(
                text("UPDATE responses SET raw = :raw, raw_codec = NULL, raw_dict_id = NULL WHERE id = :rid"),
                {"raw": body_for(IDS[0]), "rid": IDS[0]},
            )
            grouped = "SELECT coalesce(raw_codec, 'NULL'), min(id) FROM responses GROUP BY 1"
            by_codec = {str(codec): str(rid) for codec, rid in (await conn.execute(text(grouped))).all()}
    assert {"NULL", "zstd+dict"} <= set(by_codec), by_codec
    for rid in by_codec.values():
        if db_url.startswith("sqlite"):
            printed = io.StringIO()
            code = snippet.replace('"archive.db"', repr(db_url.removeprefix("sqlite:///")))
            with contextlib.redirect_stdout(printed):
                exec(code.replace('"resp_..."', repr(rid)), {})  # noqa: S102 (the documented snippet)
            assert printed.getvalue() == body_for(rid).decode() + "\n"
        else:
            assert await read_with_asyncpg(snippet, db_url, rid) == body_for(rid)


async def read_with_asyncpg(snippet: str, url: str, rid: str) -> bytes:
    import asyncpg  # type: ignore[import-untyped]
    import zstandard

    placeholder = re.search(r"PostgreSQL: .*?`(\$1)` \(asyncpg\)", snippet)
    assert placeholder, "the snippet says which placeholder asyncpg takes"
    body_query, dict_query = (q.replace("?", "$1") for q in re.findall(r'"(SELECT [^"]+)"', snippet))
    conn = await asyncpg.connect(url)
    try:
        raw, codec, dict_id, sha = await conn.fetchrow(body_query, rid)
        if codec in (None, "identity"):
            body = raw
        elif codec == "zstd":
            body = zstandard.ZstdDecompressor().decompress(raw)
        else:
            (data,) = await conn.fetchrow(dict_query, dict_id)
            body = zstandard.ZstdDecompressor(dict_data=zstandard.ZstdCompressionDict(data)).decompress(raw)
    finally:
        await conn.close()
    assert hashlib.sha256(body).hexdigest() == sha
    return bytes(body)


async def dictionaries(engine: Any) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text("SELECT count(*) FROM archive_dictionaries"))).scalar_one())


async def wait_archived(engine: Any, ids: list[str]) -> None:
    deadline = time.monotonic() + 20
    while True:
        async with engine.connect() as conn:
            states = (await conn.execute(text("SELECT id, state FROM archive_queue"))).all()
        if {rid for rid, state in states if state == "archived"} >= set(ids):
            return
        assert time.monotonic() < deadline, states
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("writer", ["inline", "process"])
async def test_a_dictionary_deleted_under_a_running_daemon_is_put_back(
    writer: str, db_url: str, make_settings: Any
) -> None:
    """Found: the daemon keeps the newest dictionary in memory, so after its row was
    deleted by hand every body it archived named the deleted dictionary: none could be
    read ("compressed with dictionary 1, which is not in archive_dictionaries"). The
    writer puts back the row it holds: the bodies written before are readable again too."""
    async with await start_mock_server() as mock, open_database(db_url) as engine:
        queue = QueueStore(engine)
        await queue.enqueue(IDS)
        worker = Worker(make_settings(db_url, mock.base_url, writer=writer), engine, once=False)
        task = asyncio.create_task(worker.run())
        try:
            await wait_archived(engine, IDS)
            deadline = time.monotonic() + 10  # trained after the batch that reached 128 bodies
            while not await dictionaries(engine):
                assert time.monotonic() < deadline, "no dictionary trained"
                await asyncio.sleep(0.05)
            async with engine.begin() as conn:
                await conn.execute(text("DELETE FROM archive_dictionaries"))
            after = ["resp_ok_after1", "resp_ok_after2"]
            await queue.enqueue(after)
            await wait_archived(engine, after)
        finally:
            worker.request_stop("test over")
            await task
        assert await dictionaries(engine) == 1
    for rid in [*after, IDS[-1]]:
        assert await show(make_settings(db_url), rid) == body_for(rid)
