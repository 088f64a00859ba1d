"""normalized rows without copies; content-addressed input items

Issue 17, points 2 and 4. The normalized tables become a projection of ``raw`` that
stores nothing twice:

- every child table's whole-element JSON column (``output_items.item``,
  ``content_parts.part``, ``annotations.annotation``, ``reasoning_summaries.summary``,
  ``web_search_actions.action``, ``web_search_sources.source``,
  ``code_interpreter_outputs.output``, ``web_extractor_urls.value``,
  ``image_search_results.result``, ``mcp_tools.tool``, ``file_search_queries.value``,
  ``file_search_results.result``, ``billing_details.detail``, ``tool_usage.detail``) is
  renamed ``extra``: new rows put there only the fields no column maps. Rows written
  before keep their whole element in it (a superset: every query on ``extra`` still
  finds its fields) until ``archiver renormalize`` rebuilds them;
- ``content_parts.annotations`` (the ``annotations`` table has one row per element),
  ``responses.usage`` (token columns, ``billing_details``, ``tool_usage``; the rest is in
  ``extra.usage``), ``responses.tool_usage`` (the ``tool_usage`` table) and
  ``responses.output_text`` (the text of the message parts; the ``response_summary``
  view computes it) are dropped;
- on SQLite the child tables become ``WITHOUT ROWID`` (the primary key is the table:
  no second copy of it in an index);
- ``input_items`` becomes a view over ``input_item_contents`` (each distinct item once,
  keyed by the SHA-256 of its canonical JSON) and ``response_input_items`` (each
  response's ordered list of item hashes); existing rows are moved there.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Sequence
from typing import Any

import orjson
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ELEMENT_COLUMNS = (
    ("output_items", "item"),
    ("content_parts", "part"),
    ("annotations", "annotation"),
    ("reasoning_summaries", "summary"),
    ("web_search_actions", "action"),
    ("web_search_sources", "source"),
    ("code_interpreter_outputs", "output"),
    ("web_extractor_urls", "value"),
    ("image_search_results", "result"),
    ("mcp_tools", "tool"),
    ("file_search_queries", "value"),
    ("file_search_results", "result"),
    ("billing_details", "detail"),
    ("tool_usage", "detail"),
)
"""Child table -> its whole-element JSON column, renamed ``extra``."""

DROPPED_RESPONSE_COLUMNS = ("output_text", "usage", "tool_usage")

TOOL_CALL_TYPES = (
    ("function_calls", "function_call"),
    ("web_search_calls", "web_search_call"),
    ("code_interpreter_calls", "code_interpreter_call"),
    ("file_search_calls", "file_search_call"),
    ("mcp_calls", "mcp_call"),
    ("image_generation_calls", "image_generation_call"),
    ("web_extractor_calls", "web_extractor_call"),
)

INPUT_SCALARS = ("id", "type", "role", "status", "call_id")
"""Keys of an input item the ``input_items`` view shows as text columns."""

MOVE_BATCH = 1000


def _json() -> Any:
    return sa.JSON(none_as_null=True).with_variant(
        postgresql.JSONB(none_as_null=True, astext_type=sa.Text()), "postgresql"
    )


def upgrade() -> None:
    bind = op.get_bind()
    dialect = bind.dialect.name
    op.execute("DROP VIEW IF EXISTS response_summary")
    op.execute("DROP VIEW IF EXISTS daily_usage")

    for column in DROPPED_RESPONSE_COLUMNS:
        if dialect == "sqlite" and sqlite3.sqlite_version_info < (3, 35):
            with op.batch_alter_table("responses") as batch:
                batch.drop_column(column)
        else:  # a plain ALTER TABLE: SQLite 3.35+ drops a column without copying the table
            op.execute(f'ALTER TABLE responses DROP COLUMN "{column}"')

    for table, column in ELEMENT_COLUMNS:
        if dialect == "sqlite":
            with op.batch_alter_table(
                table, recreate="always", table_kwargs={"sqlite_with_rowid": False}
            ) as batch:
                batch.alter_column(column, new_column_name="extra")
                if table == "content_parts":
                    batch.drop_column("annotations")
        else:
            op.alter_column(table, column, new_column_name="extra")
            if table == "content_parts":
                op.drop_column(table, "annotations")

    op.create_table(
        "input_item_contents",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("item", _json(), nullable=True),
        sa.PrimaryKeyConstraint("sha256", name=op.f("pk_input_item_contents")),
        comment="Each distinct input item once, keyed by the SHA-256 of its canonical JSON",
        sqlite_with_rowid=False,
    )
    op.create_table(
        "response_input_items",
        sa.Column("response_id", sa.String(length=256), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("item_sha256", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("response_id", "position", name=op.f("pk_response_input_items")),
        comment="GET /responses/{id}/input_items (only with --with-input-items), oldest first",
        sqlite_with_rowid=False,
    )
    _move_input_items(bind)
    op.drop_table("input_items")

    for statement in view_statements(dialect):
        op.execute(statement)


def _item_digest(item: Any) -> str:
    """archiver.normalize.item_digest, frozen here: SHA-256 of the canonical JSON."""
    try:
        text = orjson.dumps(item, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        text = json.dumps(item, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()
    return hashlib.sha256(text).hexdigest()


def _move_input_items(bind: Any) -> None:
    """Copy the old ``input_items`` rows into the content-addressed tables, in batches."""
    old = sa.table(
        "input_items",
        sa.column("response_id", sa.String()),
        sa.column("position", sa.Integer()),
        sa.column("item", _json()),
    )
    contents = sa.table("input_item_contents", sa.column("sha256", sa.String()), sa.column("item", _json()))
    links = sa.table(
        "response_input_items",
        sa.column("response_id", sa.String()),
        sa.column("position", sa.Integer()),
        sa.column("item_sha256", sa.String()),
    )
    seen: set[str] = set()
    last: tuple[str, int] | None = None
    while True:
        stmt = sa.select(old.c.response_id, old.c.position, old.c.item).order_by(
            old.c.response_id, old.c.position
        )
        if last is not None:
            stmt = stmt.where(
                sa.or_(
                    old.c.response_id > last[0],
                    sa.and_(old.c.response_id == last[0], old.c.position > last[1]),
                )
            )
        rows = bind.execute(stmt.limit(MOVE_BATCH)).all()
        if not rows:
            return
        new_contents: dict[str, Any] = {}
        link_rows = []
        for response_id, position, item in rows:
            sha = _item_digest(item)
            if sha not in seen:
                seen.add(sha)
                new_contents[sha] = item
            link_rows.append({"response_id": response_id, "position": position, "item_sha256": sha})
        if new_contents:
            bind.execute(
                contents.insert(),
                [{"sha256": sha, "item": item} for sha, item in sorted(new_contents.items())],
            )
        bind.execute(links.insert(), link_rows)
        last = (rows[-1][0], rows[-1][1])


def downgrade() -> None:
    raise RuntimeError("migration 0010 cannot be undone: restore a backup taken before it")


def _sqlite_text(path: str) -> str:
    return f"CASE json_type(c.item, '{path}') WHEN 'text' THEN json_extract(c.item, '{path}') END"


def _pg_text(key: str) -> str:
    return f"CASE WHEN jsonb_typeof(c.item -> '{key}') = 'string' THEN c.item ->> '{key}' END"


def view_statements(dialect: str) -> list[str]:
    """CREATE VIEW statements for analysts (documented in docs/schema.md)."""
    if dialect == "postgresql":
        duration = "extract(epoch FROM r.completed_at - r.created_at)"
        day = "(created_at AT TIME ZONE 'UTC')::date"
        output_text = (
            "(SELECT coalesce(string_agg(p.text, '' ORDER BY p.item_position, p.position), '')\n"
            "     FROM content_parts AS p\n"
            "     WHERE p.response_id = r.id AND p.item_type = 'message' AND p.type = 'output_text')"
        )
        scalars = ",\n    ".join(
            f"{_pg_text(key)} AS {key}" for key in ("id", "type", "role", "status", "call_id")
        )
        input_text = """CASE jsonb_typeof(c.item -> 'content')
      WHEN 'string' THEN c.item ->> 'content'
      WHEN 'array' THEN (
        SELECT string_agg(p.value ->> 'text', E'\\n' ORDER BY p.ordinality)
        FROM jsonb_array_elements(c.item -> 'content') WITH ORDINALITY AS p(value, ordinality)
        WHERE jsonb_typeof(p.value -> 'text') = 'string')
    END"""
    else:
        duration = "(julianday(r.completed_at) - julianday(r.created_at)) * 86400.0"
        day = "date(created_at)"
        # group_concat joins in the order rows arrive: the primary key's order here.
        output_text = (
            "(SELECT coalesce(group_concat(p.text, ''), '')\n"
            "     FROM content_parts AS p\n"
            "     WHERE p.response_id = r.id AND p.item_type = 'message' AND p.type = 'output_text')"
        )
        scalars = ",\n    ".join(f"{_sqlite_text('$.' + key)} AS {key}" for key in INPUT_SCALARS)
        input_text = """CASE json_type(c.item, '$.content')
      WHEN 'text' THEN json_extract(c.item, '$.content')
      WHEN 'array' THEN (
        SELECT group_concat(json_extract(p.value, '$.text'), char(10))
        FROM json_each(c.item, '$.content') AS p
        WHERE json_type(p.value, '$.text') = 'text')
    END"""
    per_type = ",\n".join(
        f"    sum(CASE WHEN type = '{item_type}' THEN 1 ELSE 0 END) AS {column}"
        for column, item_type in TOOL_CALL_TYPES
    )
    per_type_out = ",\n".join(f"    coalesce(t.{column}, 0) AS {column}" for column, _ in TOOL_CALL_TYPES)
    summary = f"""CREATE VIEW response_summary AS
SELECT
    r.id, r.model, r.status, r.created_at, r.completed_at,
    {duration} AS duration_s,
    r.input_tokens, r.cached_tokens, r.output_tokens, r.reasoning_tokens, r.total_tokens,
    {output_text} AS output_text,
    coalesce(t.tool_calls, 0) AS tool_calls,
{per_type_out},
    r.archived_at, r.change_seq
FROM responses AS r
LEFT JOIN (
  SELECT response_id,
    sum(CASE WHEN type NOT IN ('message', 'reasoning') THEN 1 ELSE 0 END) AS tool_calls,
{per_type}
  FROM output_items
  GROUP BY response_id
) AS t ON t.response_id = r.id"""
    daily = f"""CREATE VIEW daily_usage AS
SELECT
    {day} AS day,
    model,
    count(*) AS responses,
    coalesce(sum(input_tokens), 0) AS input_tokens,
    coalesce(sum(output_tokens), 0) AS output_tokens,
    coalesce(sum(cached_tokens), 0) AS cached_tokens,
    coalesce(sum(reasoning_tokens), 0) AS reasoning_tokens,
    coalesce(sum(total_tokens), 0) AS total_tokens
FROM responses
GROUP BY {day}, model"""
    inputs = f"""CREATE VIEW input_items AS
SELECT
    l.response_id, l.position,
    {scalars},
    {input_text} AS text,
    c.item, r.change_seq
FROM response_input_items AS l
JOIN input_item_contents AS c ON c.sha256 = l.item_sha256
JOIN responses AS r ON r.id = l.response_id"""
    return [summary, daily, inputs]
