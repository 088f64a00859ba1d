"""The normalized tables are a projection of ``raw`` (issue 17.2), on SQLite and PostgreSQL;
migration 0010 keeps older rows readable and moves input items to content-addressed tables."""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import LargeBinary, bindparam, func, select, text

from archiver.archived_bodies import read_bodies
from archiver.commands import show
from archiver.db import open_database
from archiver.export import export
from archiver.migrate import migrate
from archiver.mockapi import MockConfig, load_bodies, start_mock_server
from archiver.queue import QueueStore
from archiver.schema import CHILD_TABLES, input_items, responses, tool_sets
from archiver.worker import Worker
from tests.history import engine_at
from tests.projection import assert_projection, parse_body

pytestmark = pytest.mark.timeout(240)

MIGRATION = importlib.import_module("archiver.migrations.versions.0010_projection_without_copies")


async def _tables_of(conn: Any, response_id: str) -> dict[str, list[dict[str, Any]]]:
    tables: dict[str, list[dict[str, Any]]] = {}
    result = await conn.execute(select(responses).where(responses.c.id == response_id))
    tables["responses"] = [dict(row._mapping) for row in result]
    result = await conn.execute(
        select(tool_sets.c.tools)
        .join(responses, responses.c.tool_set_id == tool_sets.c.id)
        .where(responses.c.id == response_id)
    )
    tables["tool_sets"] = [dict(row._mapping) for row in result]
    for table in CHILD_TABLES:
        result = await conn.execute(select(table).where(table.c.response_id == response_id))
        tables[table.name] = [dict(row._mapping) for row in result]
    return tables


async def test_every_corpus_body_is_a_projection_of_raw(
    db_url: str, make_settings: Any, corpus_dir: Path
) -> None:
    """Every field of every corpus body reachable from the rows read back from the database,
    no element stored whole, opaque payloads only in raw; show byte-exact."""
    bodies = load_bodies(corpus_dir)
    async with open_database(db_url) as engine:
        async with await start_mock_server(MockConfig(bodies_dir=corpus_dir, bodies_only=True)) as mock:
            settings = make_settings(db_url, mock.base_url, max_polls=1)
            await QueueStore(engine).enqueue(sorted(bodies))
            await Worker(settings, engine, once=True).run()
        async with engine.connect() as conn:
            for rid, raw in bodies.items():
                assert_projection(parse_body(raw), await _tables_of(conn, rid))
            stored = dict((await conn.execute(select(responses.c.id, func.length(responses.c.raw)))).all())
    for rid, raw in bodies.items():
        assert await show(make_settings(db_url), rid) == raw, rid
    # The images are in raw once: the whole archive is now smaller than the JSON it holds.
    assert sum(stored.values()) < sum(len(b) for b in bodies.values())


OLD_ITEM = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "content": [{"type": "output_text", "text": "Hi"}],
}
SYSTEM = {"id": "msg_s", "type": "message", "role": "system", "content": "Be brief."}
USER = {
    "id": "msg_u",
    "type": "message",
    "role": "user",
    "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}],
}


async def test_rows_written_before_0010_stay_readable(db_url: str, tmp_path: Path) -> None:
    """Old rows: raw byte-exact, the whole element now under extra, input items in the view."""
    raw = orjson.dumps({"id": "resp_old", "object": "response", "status": "completed", "output": [OLD_ITEM]})
    async with engine_at(db_url, MIGRATION.down_revision) as engine:
        async with engine.begin() as conn:
            insert = text(
                "INSERT INTO responses (id, status, output_text, usage, raw, raw_sha256, fetched_at, "
                "archived_at, change_seq) VALUES (:id, 'completed', 'Hi', :usage, :raw, :sha, "
                "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, :seq)"
            ).bindparams(bindparam("raw", type_=LargeBinary()))
            usage = '{"input_tokens": 3}'
            sha = hashlib.sha256(raw).hexdigest()
            await conn.execute(insert, [{"id": "resp_old", "usage": usage, "raw": raw, "sha": sha, "seq": 1}])
            await conn.execute(
                insert, [{"id": "resp_old2", "usage": usage, "raw": raw, "sha": sha, "seq": 2}]
            )
            await conn.execute(
                text(
                    "INSERT INTO output_items (response_id, position, id, type, item, change_seq) "
                    "VALUES ('resp_old', 0, 'msg_1', 'message', :item, 1)"
                ),
                {"item": orjson.dumps(OLD_ITEM).decode()},
            )
            await conn.execute(
                text(
                    "INSERT INTO content_parts (response_id, item_position, position, item_type, type, "
                    "text, annotations, part, change_seq) VALUES ('resp_old', 0, 0, 'message', "
                    "'output_text', 'Hi', '[]', :part, 1)"
                ),
                {"part": orjson.dumps(OLD_ITEM["content"][0]).decode()},
            )
            # Two responses of one conversation: the system prompt is listed by both.
            for rid, items, seq in (("resp_old", [SYSTEM], 1), ("resp_old2", [SYSTEM, USER], 2)):
                for position, item in enumerate(items):
                    await conn.execute(
                        text(
                            "INSERT INTO input_items (response_id, position, id, type, role, text, item, "
                            "change_seq) VALUES (:rid, :pos, :id, 'message', :role, 'x', :item, :seq)"
                        ),
                        {
                            "rid": rid,
                            "pos": position,
                            "id": item["id"],
                            "role": item["role"],
                            "item": orjson.dumps(item).decode(),
                            "seq": seq,
                        },
                    )
            await conn.execute(text("UPDATE archive_changes SET seq = 2 WHERE name = 'archive'"))
        await migrate(engine)
        async with engine.connect() as conn:
            (extra,) = (await conn.execute(text("SELECT extra FROM output_items"))).one()
            assert (extra if isinstance(extra, dict) else orjson.loads(extra)) == OLD_ITEM  # a superset
            listed = (
                await conn.execute(
                    text(
                        "SELECT response_id, position, id, role, text, item, change_seq FROM input_items "
                        "ORDER BY response_id, position"
                    )
                )
            ).all()
            items = [r[5] if isinstance(r[5], dict) else orjson.loads(r[5]) for r in listed]
            assert items == [SYSTEM, SYSTEM, USER]
            assert [(r[0], r[1], r[2], r[3], r[4], r[6]) for r in listed] == [
                ("resp_old", 0, "msg_s", "system", "Be brief.", 1),
                ("resp_old2", 0, "msg_s", "system", "Be brief.", 2),
                ("resp_old2", 1, "msg_u", "user", "a\nb", 2),
            ]
            assert (await conn.execute(text("SELECT count(*) FROM input_item_contents"))).scalar() == 2
            (answer,) = (
                await conn.execute(text("SELECT output_text FROM response_summary WHERE id = 'resp_old'"))
            ).one()
            assert answer == "Hi"
        summary = await export(engine, tmp_path / "out", fmt="jsonl")
        assert summary.rows["input_items"] == 3 and summary.rows["output_items"] == 1
        # every column of the view, the item JSON as text, as before the input tables changed
        exported = [
            orjson.loads(line)
            for line in next((tmp_path / "out" / "input_items").glob("*.jsonl")).read_bytes().splitlines()
        ]
        assert [list(row) for row in exported] == [[c.name for c in input_items.columns]] * 3
        assert [orjson.loads(row["item"]) for row in exported] == [SYSTEM, SYSTEM, USER]
    async with open_database(db_url) as engine, engine.connect() as conn:
        assert (await read_bodies(conn, ["resp_old"]))["resp_old"] == raw
