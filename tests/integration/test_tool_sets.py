"""tool_sets: each distinct ``tools`` value stored once (issue 17), on SQLite and PostgreSQL:
the writer, renormalize, the export, migration 0015, and writers that race."""

from __future__ import annotations

import asyncio
import hashlib
import importlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from alembic import command
from sqlalchemy import DateTime, LargeBinary, bindparam, func, select, text

from archiver.commands import show
from archiver.db import open_database
from archiver.export import export
from archiver.migrate import alembic_config, migrate
from archiver.mockapi import MockConfig, start_mock_server
from archiver.queue import QueueStore
from archiver.renormalize import renormalize
from archiver.schema import responses, tool_sets
from archiver.tool_sets import ToolSetIds, tools_digest
from archiver.worker import Worker
from tests.history import engine_at

pytestmark = pytest.mark.timeout(240)

MIGRATION = importlib.import_module(
    "archiver.migrations.versions.0015_tool_sets_each_distinct_tools_array_once"
)

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": True,
}
TOOLS_A = [WEATHER, {"type": "web_search"}]
TOOLS_A_REORDERED = [dict(reversed(list(WEATHER.items()))), {"type": "web_search"}]
TOOLS_B = [{"type": "code_interpreter", "container": {"type": "auto"}}]

ABSENT = object()
BODIES: dict[str, Any] = {
    "resp_a1": TOOLS_A,
    "resp_a2": TOOLS_A,
    "resp_a3": TOOLS_A_REORDERED,
    "resp_b1": TOOLS_B,
    "resp_empty": [],
    "resp_null": None,
    "resp_absent": ABSENT,
}
"""Response ID -> its ``tools`` (``ABSENT``: the body has no such key)."""


def body(rid: str, tools: Any, text_: str = "Hi") -> bytes:
    out: dict[str, Any] = {"id": rid, "object": "response", "status": "completed", "model": "qwen-plus"}
    if tools is not ABSENT:
        out["tools"] = tools
    out["output"] = [
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text_}]}
    ]
    return orjson.dumps(out)


def write_bodies(directory: Path, text_: str = "Hi") -> dict[str, bytes]:
    directory.mkdir(exist_ok=True)
    bodies = {rid: body(rid, tools, text_) for rid, tools in BODIES.items()}
    for rid, raw in bodies.items():
        (directory / f"{rid}.json").write_bytes(raw)
    return bodies


async def archive(
    db_url: str, engine: Any, make_settings: Any, directory: Path, *, refetch: bool = False
) -> None:
    async with await start_mock_server(MockConfig(bodies_dir=directory, bodies_only=True)) as mock:
        await QueueStore(engine).enqueue(sorted(BODIES), refetch=refetch)
        await Worker(make_settings(db_url, mock.base_url), engine, once=True).run()


def as_json(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, str) else value


async def references(engine: Any) -> dict[str, Any]:
    """Response ID -> (tool_set_id, its tools) as stored."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(responses.c.id, responses.c.tool_set_id, tool_sets.c.tools).select_from(
                responses.outerjoin(tool_sets, tool_sets.c.id == responses.c.tool_set_id)
            )
        )
        return {rid: (set_id, tools) for rid, set_id, tools in rows}


async def tool_set_count(engine: Any) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(tool_sets))).scalar_one())


async def test_each_distinct_tools_value_is_stored_once(
    db_url: str, make_settings: Any, tmp_path: Path
) -> None:
    """Equal arrays share one row (key order aside), different ones do not; [] is a set,
    null and absent are NULL; export, view and show see what they saw before."""
    bodies = write_bodies(tmp_path / "bodies")
    async with open_database(db_url) as engine:
        await archive(db_url, engine, make_settings, tmp_path / "bodies")
        refs = await references(engine)
        assert await tool_set_count(engine) == 3
        assert refs["resp_a1"][0] == refs["resp_a2"][0] == refs["resp_a3"][0] is not None
        assert len({refs[r][0] for r in ("resp_a1", "resp_b1", "resp_empty")}) == 3
        assert as_json(refs["resp_a1"][1]) == TOOLS_A  # == TOOLS_A_REORDERED: dicts have no order
        assert as_json(refs["resp_b1"][1]) == TOOLS_B
        assert as_json(refs["resp_empty"][1]) == []
        assert refs["resp_null"] == refs["resp_absent"] == (None, None)
        async with engine.connect() as conn:
            digests = set((await conn.execute(select(tool_sets.c.sha256))).scalars())
            view = dict((await conn.execute(text("SELECT response_id, tools FROM response_tools"))).all())
        assert digests == {tools_digest(TOOLS_A), tools_digest(TOOLS_B), tools_digest([])}
        assert tools_digest(TOOLS_A) == tools_digest(TOOLS_A_REORDERED)
        assert {rid: as_json(v) for rid, v in view.items()} == {
            rid: as_json(refs[rid][1]) for rid in ("resp_a1", "resp_a2", "resp_a3", "resp_b1", "resp_empty")
        }

        # The export's responses rows carry tools as before: the value, or null.
        await export(engine, tmp_path / "out", fmt="jsonl")
        exported = [
            orjson.loads(line)
            for line in next((tmp_path / "out" / "responses").glob("*.jsonl")).read_bytes().splitlines()
        ]
        assert all("tool_set_id" not in row for row in exported)
        got = {row["id"]: None if row["tools"] is None else orjson.loads(row["tools"]) for row in exported}
        want = {rid: None if tools is ABSENT else tools for rid, tools in BODIES.items()}
        assert got == want

        # A new writer (empty cache) and renormalize find the sets already stored.
        later = write_bodies(tmp_path / "later", text_="Hello again")
        await archive(db_url, engine, make_settings, tmp_path / "later", refetch=True)
        assert await references(engine) == refs
        result = await renormalize(engine, everything=True, batch_size=3)
        assert result.report.rewritten == len(BODIES)
        assert await references(engine) == refs
        assert await tool_set_count(engine) == 3
    for rid, raw in later.items():
        assert raw != bodies[rid]
        assert await show(make_settings(db_url), rid) == raw, rid


async def test_a_rolled_back_tool_set_is_not_remembered(db_url: str) -> None:
    """An id inserted by a transaction that rolled back is never handed out."""
    ids = ToolSetIds()

    class Rollback(Exception):
        pass

    async with open_database(db_url) as engine:
        with pytest.raises(Rollback):
            async with engine.begin() as conn:
                ids.begin()
                assert (await conn.run_sync(ids.resolve_sync, [TOOLS_B]))[0] is not None
                raise Rollback
        assert await tool_set_count(engine) == 0
        async with engine.begin() as conn:
            ids.begin()
            await conn.run_sync(ids.resolve_sync, [TOOLS_A])  # takes the rolled-back id on SQLite
            ids.begin()
            (set_id,) = await conn.run_sync(ids.resolve_sync, [TOOLS_B])
        ids.confirm()
        async with engine.connect() as conn:
            stored = (await conn.execute(select(tool_sets.c.tools).where(tool_sets.c.id == set_id))).scalar()
        assert as_json(stored) == TOOLS_B


@pytest.mark.postgres
async def test_two_writers_storing_one_new_tool_set_at_once_share_one_row(pg_url: str) -> None:
    """The second writer's INSERT waits for the first one's commit, then finds its row."""
    async with open_database(pg_url) as first_engine, open_database(pg_url) as second_engine:
        first, second = ToolSetIds(), ToolSetIds()
        async with first_engine.connect() as conn_a, second_engine.connect() as conn_b:
            await conn_a.begin()
            await conn_b.begin()
            (id_a,) = await conn_a.run_sync(first.resolve_sync, [TOOLS_A])
            waiting = asyncio.create_task(conn_b.run_sync(second.resolve_sync, [TOOLS_B, TOOLS_A]))
            await asyncio.sleep(0.5)
            assert not waiting.done(), "the second writer waits for the first one's uncommitted row"
            await conn_a.commit()
            id_b_new, id_b = await asyncio.wait_for(waiting, 30)
            await conn_b.commit()
        assert id_b == id_a and id_b_new != id_a
        assert await tool_set_count(first_engine) == 2


async def test_migration_0015_moves_every_tools_value(
    db_url: str, make_settings: Any, tmp_path: Path
) -> None:
    """responses.tools of a 0013 archive: each distinct value once, every response pointing
    at its own, nothing lost, the column gone; the writer then finds the moved sets."""
    old_values: dict[str, str | None] = {
        "resp_a1": orjson.dumps(TOOLS_A).decode(),
        "resp_a2": orjson.dumps(TOOLS_A).decode(),
        "resp_a3": orjson.dumps(TOOLS_A_REORDERED).decode(),
        "resp_a4": '[{"type": "function", "name": "get_weather"}]',  # spaced JSON text
        "resp_a5": '[{"type":"function","name":"get_weather"}]',
        "resp_b1": orjson.dumps(TOOLS_B).decode(),
        "resp_empty": "[]",
        "resp_json_null": "null",
        "resp_none": None,
    }
    async with engine_at(db_url, MIGRATION.down_revision) as engine:
        async with engine.begin() as conn:
            insert = text(
                "INSERT INTO responses (id, status, tools, raw, raw_sha256, fetched_at, archived_at, "
                "change_seq) VALUES (:id, 'completed', :tools, :raw, :sha, :at, :at, :seq)"
            ).bindparams(
                bindparam("raw", type_=LargeBinary()), bindparam("at", type_=DateTime(timezone=True))
            )
            for seq, (rid, tools) in enumerate(old_values.items(), start=1):
                raw = b'{"id": "%s"}' % rid.encode()
                await conn.execute(
                    insert,
                    {
                        "id": rid,
                        "tools": tools,
                        "raw": raw,
                        "sha": hashlib.sha256(raw).hexdigest(),
                        "at": datetime(2026, 11, 10 + seq, 12, tzinfo=UTC),
                        "seq": seq,
                    },
                )
        await migrate(engine)
        async with engine.connect() as conn:
            columns = (await conn.execute(text("SELECT * FROM responses LIMIT 1"))).keys()
            assert "tools" not in columns and "tool_set_id" in columns
            sets = (
                await conn.execute(
                    select(tool_sets.c.id, tool_sets.c.sha256, tool_sets.c.tools, tool_sets.c.first_seen_at)
                )
            ).all()
        refs = await references(engine)
        for rid, old in old_values.items():
            if old is None or old == "null":
                assert refs[rid] == (None, None), rid
            else:
                assert as_json(refs[rid][1]) == orjson.loads(old), rid
        assert refs["resp_a1"][0] == refs["resp_a2"][0] == refs["resp_a3"][0]
        assert refs["resp_a4"][0] == refs["resp_a5"][0] != refs["resp_a1"][0]
        assert len(sets) == 4  # A, the one-function array, B, []
        assert {sha for _, sha, tools, _ in sets} == {tools_digest(as_json(tools)) for _, _, tools, _ in sets}
        first_seen = {set_id: at for set_id, _, _, at in sets}
        assert str(first_seen[refs["resp_a1"][0]]).startswith("2026-11-11")  # resp_a1's archived_at
        assert str(first_seen[refs["resp_a4"][0]]).startswith("2026-11-14")

        # Downgrading puts every value back in responses.tools (JSON null as NULL).
        async with engine.begin() as conn:
            await conn.run_sync(lambda sync: command.downgrade(alembic_config(sync), MIGRATION.down_revision))
        async with engine.connect() as conn:
            back = dict((await conn.execute(text("SELECT id, tools FROM responses"))).all())
        assert {rid: as_json(v) for rid, v in back.items()} == {
            rid: None if old in (None, "null") else orjson.loads(old) for rid, old in old_values.items()
        }
        await migrate(engine)
        assert await references(engine) == refs

    # The writer's digest is the migration's: archiving TOOLS_A again adds no set.
    bodies = tmp_path / "bodies"
    bodies.mkdir()
    (bodies / "resp_new.json").write_bytes(body("resp_new", TOOLS_A_REORDERED))
    async with open_database(db_url) as engine:
        async with await start_mock_server(MockConfig(bodies_dir=bodies, bodies_only=True)) as mock:
            await QueueStore(engine).enqueue(["resp_new"])
            await Worker(make_settings(db_url, mock.base_url), engine, once=True).run()
        after = await references(engine)
        assert after["resp_new"][0] == refs["resp_a1"][0]
        assert await tool_set_count(engine) == 4
