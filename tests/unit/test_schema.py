"""The archive tables: their shape, their DDL, and that normalize()'s rows fit them."""

from __future__ import annotations

import hashlib
import importlib
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    BigInteger,
    Engine,
    Integer,
    String,
    Table,
    create_engine,
    func,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.schema import CreateIndex, CreateTable

from archiver import schema
from archiver.normalize import NormalizedResponse, normalize, output_text
from archiver.schema import CHILD_TABLES, JSONDoc, metadata, output_items, responses
from archiver.tool_sets import ToolSetIds

CORPUS_DIR = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "responses"
CORPUS_FILES = sorted(CORPUS_DIR.glob("*.json"))
DOCS = Path(__file__).resolve().parents[2] / "docs" / "schema.md"
NOW = datetime(2026, 5, 13, 12, 0, tzinfo=UTC)


def archive_tables() -> list[Table]:
    """Every table defined in archiver.schema (the queue table lives elsewhere)."""
    return [
        value for value in vars(schema).values() if isinstance(value, Table) and value.metadata is metadata
    ]


@pytest.fixture
def engine() -> Iterator[Engine]:
    engine = create_engine("sqlite://")
    metadata.create_all(engine, tables=archive_tables())
    # The analyst views come from a migration: create them the way it does.
    views = importlib.import_module("archiver.migrations.versions.0010_projection_without_copies")
    tools = importlib.import_module(
        "archiver.migrations.versions.0015_tool_sets_each_distinct_tools_array_once"
    )
    with engine.begin() as conn:
        for statement in (*views.view_statements("sqlite"), tools.VIEW):
            conn.exec_driver_sql(statement)
    yield engine
    engine.dispose()


def store(engine: Engine, raw: bytes, result: NormalizedResponse) -> None:
    """What the writer does: one INSERT for the response, one executemany per child table."""
    response = {
        **result.response,
        "raw": raw,
        "raw_sha256": hashlib.sha256(raw).hexdigest(),
        "fetched_at": NOW,
        "archived_at": NOW,
        "change_seq": 1,
    }
    with engine.begin() as conn:
        (response["tool_set_id"],) = ToolSetIds().resolve_sync(conn, [result.tools])
        conn.execute(responses.insert(), [response])
        for table in CHILD_TABLES:
            rows = [{**row, "change_seq": 1} for row in result.children[table.name]]
            if rows:
                conn.execute(table.insert(), rows)


# --- shape -----------------------------------------------------------------------------


def test_child_tables_are_every_table_but_responses_parents_first() -> None:
    bookkeeping = {
        schema.archive_changes,
        schema.export_cursors,
        schema.archive_dictionaries,
        schema.archive_meta,
    }
    # input items: their own path
    bookkeeping |= {schema.input_item_contents, schema.response_input_items, schema.input_item_lists}
    bookkeeping.add(schema.tool_sets)  # content-addressed, named by responses.tool_set_id
    assert set(CHILD_TABLES) == set(archive_tables()) - {responses} - bookkeeping
    assert len(set(CHILD_TABLES)) == len(CHILD_TABLES)
    assert CHILD_TABLES[:3] == (schema.output_items, schema.content_parts, schema.annotations)


@pytest.mark.parametrize("table", CHILD_TABLES, ids=lambda t: t.name)
def test_child_table_conventions(table: Table) -> None:
    response_id = table.c.response_id
    assert isinstance(response_id.type, String) and response_id.type.length == 256
    assert not response_id.nullable
    pk = list(table.primary_key.columns)
    assert pk[0] is response_id and len(pk) >= 2
    assert table.primary_key.name == f"pk_{table.name}"
    assert not table.foreign_keys
    for column in table.columns:
        if column.name == "position" or column.name.endswith("_position"):
            assert isinstance(column.type, Integer) and not column.nullable, column.name
        if column.name.endswith("_tokens") or column.name == "count":
            assert isinstance(column.type, BigInteger), column.name
    assert isinstance(table.c.extra.type, JSONDoc), "what no column maps goes to extra"
    assert table.dialect_options["sqlite"]["with_rowid"] is False


def test_responses_contract_columns() -> None:
    columns = responses.c
    assert list(responses.primary_key.columns) == [columns.id]
    assert columns.id.type.length == 256
    usage_columns = ("input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens")
    for name in (*usage_columns, "total_tokens"):
        assert isinstance(columns[name].type, BigInteger), name
    for name in ("created_at", "completed_at", "fetched_at", "archived_at"):
        assert columns[name].type.timezone, name
    json_columns = ("error", "metadata", "incomplete_details", "instructions", "tool_choice")
    for name in (*json_columns, "reasoning", "text", "extra"):
        assert isinstance(columns[name].type, JSONDoc), name
    assert columns.raw_sha256.type.length == 64
    # No index on model (migration 0014): a handful of values, 19 bytes a response.
    assert {ix.name for ix in responses.indexes} == {"ix_responses_created_at", "ix_responses_change_seq"}
    contract = ("id", "type", "role", "status", "name", "call_id", "arguments", "server_label")
    for name in (*contract, "extra"):
        assert name in output_items.c, name


def test_postgresql_ddl() -> None:
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    ddl = str(CreateTable(responses).compile(dialect=dialect))
    assert "raw BYTEA NOT NULL" in ddl
    assert "created_at TIMESTAMP WITH TIME ZONE" in ddl
    assert "error JSONB" in ddl and "extra JSONB" in ddl
    assert '"user" TEXT' in ddl  # reserved word in PostgreSQL: quoted
    assert "CONSTRAINT pk_responses PRIMARY KEY (id)" in ddl
    items = str(CreateTable(output_items).compile(dialect=dialect))
    assert "extra JSONB" in items
    assert "CONSTRAINT pk_output_items PRIMARY KEY (response_id, position)" in items
    indexes = sorted(str(CreateIndex(ix).compile(dialect=dialect)) for ix in responses.indexes)
    assert indexes == [
        "CREATE INDEX ix_responses_change_seq ON responses (change_seq, id)",
        "CREATE INDEX ix_responses_created_at ON responses (created_at)",
    ]


def test_sqlite_ddl_has_json_text() -> None:
    ddl = str(CreateTable(schema.content_parts).compile(dialect=sqlite.dialect()))
    assert "extra JSON" in ddl
    assert ddl.rstrip().endswith("WITHOUT ROWID")


# --- rows fit ---------------------------------------------------------------------------


def test_every_corpus_body_fits_the_tables(engine: Engine) -> None:
    expected: dict[str, int] = {table.name: 0 for table in CHILD_TABLES}
    bodies: dict[str, dict[str, Any]] = {}
    raws: dict[str, bytes] = {}
    for path in CORPUS_FILES:
        raw = path.read_bytes()
        body = json.loads(raw)
        bodies[body["id"]] = body
        raws[body["id"]] = raw
        result = normalize(body)
        store(engine, raw, result)
        for name, rows in result.children.items():
            expected[name] += len(rows)
    assert len(bodies) == len(CORPUS_FILES) == 150

    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(responses)) == len(bodies)
        for table in CHILD_TABLES:
            count = conn.scalar(select(func.count()).select_from(table))
            assert count == expected[table.name], table.name
        assert expected["output_items"] > 300 and expected["annotations"] > 50

        # raw bytes and JSON documents come back unchanged
        for response_id, raw_back, metadata_ in conn.execute(
            select(responses.c.id, responses.c.raw, responses.c.metadata)
        ):
            assert raw_back == raws[response_id]
            assert metadata_ == bodies[response_id].get("metadata")
        for response_id, position, extra in conn.execute(
            select(output_items.c.response_id, output_items.c.position, output_items.c.extra)
        ):
            want = normalize(bodies[response_id]).children["output_items"][position]["extra"]
            assert extra == want

        # None is SQL NULL, not the JSON text 'null'
        without_error = sum(1 for b in bodies.values() if b.get("error") is None)
        assert (
            conn.scalar(select(func.count()).select_from(responses).where(responses.c.error.is_(None)))
            == without_error
        )

        dashscope = conn.execute(
            select(responses).where(responses.c.id == "resp_b7f63a50-d3ca-96e4-a352-bef7e911ae32")
        ).one()
        assert dashscope.created_at.replace(tzinfo=UTC) == datetime.fromtimestamp(1787041707, UTC)
        assert dashscope.reasoning_tokens == 33
        summary = conn.exec_driver_sql(
            "SELECT output_text FROM response_summary WHERE id = ?", (dashscope.id,)
        ).scalar()
        assert summary == "The capital of France is **Paris**."
        # the view computes output_text as the SDKs do, for every body
        computed = dict(conn.exec_driver_sql("SELECT id, output_text FROM response_summary").fetchall())
        assert computed == {rid: output_text(normalize(body).children) for rid, body in bodies.items()}


def test_odd_bodies_fit_the_tables(engine: Engine) -> None:
    """Values that typed columns refuse (huge ints, wrong types) never reach them."""
    odd = {
        "id": "resp_odd",
        "created_at": 1e300,
        "temperature": 2**80,
        "top_logprobs": 2**40,
        "max_output_tokens": 2**70,
        "metadata": {"big": 2**70},
        "usage": {
            "input_tokens": 2**64,
            "x_details": [{"input_tokens": 2**63, "x_billing_type": 1}, None],
            "x_tools": {"web_search": {"count": 2**65}, "other": "many"},
        },
        "output": [
            {
                "type": "message",
                "content": [
                    {
                        "type": "output_text",
                        "text": "hi",
                        "annotations": [{"start_index": 2**33, "index": -(2**40)}, 5],
                    }
                ],
            },
            {"type": "file_search_call", "results": [{"score": 10**400}], "queries": [{"q": 1}]},
            {"type": "image_search_call", "output": '[{"index": 99999999999999999999}]'},
            {"type": "function_call", "arguments": {"n": 2**80}},
            7,
        ],
    }
    result = normalize(odd)
    assert result.response["created_at"] is None
    assert result.response["temperature"] == float(2**80)
    assert result.response["top_logprobs"] is None
    assert result.children["file_search_results"][0]["score"] is None
    assert result.children["image_search_results"][0]["result_index"] is None
    assert result.children["annotations"][0]["start_index"] is None
    assert json.loads(result.children["output_items"][3]["arguments"]) == {"n": 2**80}
    store(engine, json.dumps(odd).encode(), result)
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(output_items)) == 5


# --- docs/schema.md ---------------------------------------------------------------------

DASHSCOPE_TOOLS_BODY: dict[str, Any] = {
    "id": "resp_3f0c9a52-7d1e-9b4a-8c2f-0e5d6a7b8c9d",
    "object": "response",
    "status": "completed",
    "model": "qwen3-max-2026-01-23",
    "created_at": 1778676418,
    "completed_at": 1778676431,
    "output": [
        {
            "id": "we_1",
            "type": "web_extractor_call",
            "status": "completed",
            "goal": "Summarize the code interpreter topic",
            "output": "The code interpreter runs Python in a sandbox ...",
            "urls": ["https://www.alibabacloud.com/help/en/model-studio/code-interpreter"],
        },
        {
            "id": "wsi_1",
            "type": "web_search_image_call",
            "status": "completed",
            "name": "web_search_image",
            "arguments": '{"queries": ["West Lake sunset"]}',
            "output": '[{"title": "West Lake", "url": "https://img.example.cn/1.jpg", "index": 1}]',
        },
    ],
    "usage": {
        "input_tokens": 900,
        "output_tokens": 120,
        "total_tokens": 1020,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": 0},
        "x_details": [
            {
                "input_tokens": 900,
                "output_tokens": 120,
                "total_tokens": 1020,
                "x_billing_type": "response_api",
            }
        ],
        "x_tools": {"web_extractor": {"count": 1}, "web_search_image": {"count": 1}},
    },
}


def doc_sections() -> dict[str, str]:
    """Section text by table name, from the "## `name`" headings."""
    parts = re.split(r"^## `(\w+)`$", DOCS.read_text(), flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def documented_columns(section: str) -> list[str]:
    """First cells of the rows of the "| Column | Type | Content |" table."""
    names: list[str] = []
    in_table = False
    for line in section.splitlines():
        if line.startswith("| Column |"):
            in_table = True
        elif in_table and line.startswith("|"):
            match = re.match(r"\| `(\w+)` \|", line)
            if match:
                names.append(match.group(1))
        else:
            in_table = False
    return names


DOCUMENTED = [
    responses,
    *CHILD_TABLES,
    schema.input_items,
    schema.input_item_contents,
    schema.response_input_items,
    schema.input_item_lists,
    schema.tool_sets,
]


@pytest.mark.parametrize("table", DOCUMENTED, ids=lambda t: t.name)
def test_docs_describe_every_column(table: Table) -> None:
    sections = doc_sections()
    assert table.name in sections, f"docs/schema.md has no section for {table.name}"
    assert documented_columns(sections[table.name]) == [c.name for c in table.columns]
    assert "```sql" in sections[table.name], f"no example query for {table.name}"


def test_docs_sql_examples_run_on_sqlite(engine: Engine) -> None:
    for path in CORPUS_FILES:
        raw = path.read_bytes()
        store(engine, raw, normalize(json.loads(raw)))
    store(engine, json.dumps(DASHSCOPE_TOOLS_BODY).encode(), normalize(DASHSCOPE_TOOLS_BODY))
    # Input items come from their own endpoint; give one response a realistic set.
    from archiver.normalize import normalize_input_items, normalize_input_list
    from archiver.schema import input_item_contents, input_item_lists, response_input_items

    inputs = [
        {"id": "msg_sys", "type": "message", "role": "system", "content": "Be brief."},
        {
            "id": "msg_usr",
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "Hi"}],
        },
    ]
    rows = normalize_input_items(DASHSCOPE_TOOLS_BODY["id"], inputs)
    with engine.begin() as conn:
        conn.execute(
            input_item_contents.insert(), [{"sha256": r["item_sha256"], "item": r["item"]} for r in rows]
        )
        conn.execute(response_input_items.insert(), rows)
        # DashScope's list fields: created_at in milliseconds.
        listed = normalize_input_list(
            DASHSCOPE_TOOLS_BODY["id"],
            {"id": DASHSCOPE_TOOLS_BODY["id"], "model": "qwen-plus", "created_at": 1778674066000},
        )
        conn.execute(input_item_lists.insert(), [listed])

    blocks = re.findall(r"```sql\n(.*?)```", DOCS.read_text(), flags=re.DOTALL)
    statements = [s.strip() for block in blocks for s in block.split(";") if s.strip()]
    assert len(statements) >= 20
    with engine.connect() as conn:
        for statement in statements:
            found = conn.exec_driver_sql(statement).fetchall()
            assert found, f"example returns nothing on the corpus:\n{statement}"
