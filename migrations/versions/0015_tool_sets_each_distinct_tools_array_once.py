"""tool_sets: each distinct ``tools`` array once; responses.tool_set_id names it

Every Response echoes its request's ``tools``, and an application sends the same array
(function JSON schemas, often several KB) on every request, so ``responses.tools`` held
the same value once per response. ``tool_sets`` holds each distinct value once (``id``,
``sha256`` of its canonical JSON, unique, ``tools``, ``first_seen_at``), and
``responses.tool_set_id`` names it (NULL: the body has no ``tools``, or JSON null; an
empty array is a tool set like any other). The values are moved, ``responses.tools`` is
dropped, and the view ``response_tools`` (``response_id``, ``tool_set_id``, ``tools``)
lists the tools of every response that has some.

The move reads each distinct value once (a temporary table of them, digested in
batches), then sets every response's ``tool_set_id`` with one UPDATE joined on the old
value, and checks that no value was left behind before it drops the column. On a large
archive both the UPDATE and (SQLite) the DROP COLUMN rewrite the ``responses`` rows once;
``archiver compact`` or ``VACUUM`` (SQLite) and ``VACUUM responses`` (PostgreSQL) give the
space back afterwards.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-01
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from collections.abc import Sequence
from typing import Any

import orjson
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from archiver.errors import SchemaError

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DIGEST_BATCH = 1000
DIGEST_BATCH_BYTES = 8 << 20
"""Characters of tools values read at once: a provider can send large arrays that vary."""


def _json() -> Any:
    return sa.JSON(none_as_null=True).with_variant(
        postgresql.JSONB(none_as_null=True, astext_type=sa.Text()), "postgresql"
    )


def upgrade() -> None:
    bind = op.get_bind()
    dialect = bind.dialect.name
    op.create_table(
        "tool_sets",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("tools", _json(), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tool_sets")),
        sa.UniqueConstraint("sha256", name=op.f("uq_tool_sets_sha256")),
        comment="Each distinct tools array of the responses once; responses.tool_set_id names it",
    )
    if dialect == "postgresql":
        _refuse_dependents(_views_on_tools(bind))
    op.add_column("responses", sa.Column("tool_set_id", sa.Integer(), nullable=True))
    _move_tools(bind, dialect)
    if dialect == "sqlite" and sqlite3.sqlite_version_info < (3, 35):
        with op.batch_alter_table("responses") as batch:
            batch.drop_column("tools")
    else:  # a plain ALTER TABLE: SQLite 3.35+ drops a column without copying the table
        try:
            op.execute('ALTER TABLE responses DROP COLUMN "tools"')
        except sa.exc.OperationalError as exc:  # SQLite: "error in view V after drop column: ..."
            found = re.search(r"error in (view|trigger) (\S+) after drop column", str(exc.orig))
            if found is None:
                raise
            _refuse_dependents([f"{found[1]} {found[2]}"])
    op.execute(VIEW)


def _views_on_tools(bind: Any) -> list[str]:
    """PostgreSQL: the views (and materialized views) that read ``responses.tools``."""
    rows = bind.exec_driver_sql(
        "SELECT DISTINCT v.relname FROM pg_depend AS d "
        "JOIN pg_rewrite AS r ON r.oid = d.objid JOIN pg_class AS v ON v.oid = r.ev_class "
        "JOIN pg_attribute AS a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid "
        "WHERE d.refobjid = 'responses'::regclass AND a.attname = 'tools' AND v.relname <> 'responses' "
        "ORDER BY 1"
    ).all()
    return [f"view {name}" for (name,) in rows]


def _refuse_dependents(dependents: list[str]) -> None:
    """Stop before anything changes when an operator's view or trigger reads ``responses.tools``."""
    if dependents:
        raise SchemaError(
            f"migration 0015 moves responses.tools to the table tool_sets (the view response_tools "
            f"lists each response's tools) and drops the column, which {', '.join(dependents)} "
            "reads: drop it, or make it read response_tools (docs/schema.md), then run "
            "archiver migrate again; nothing was changed"
        )


VIEW = """CREATE VIEW response_tools AS
SELECT r.id AS response_id, r.tool_set_id, t.tools
FROM responses AS r
JOIN tool_sets AS t ON t.id = r.tool_set_id"""
"""The tools of every response that has some (docs/schema.md)."""


def _integral_floats_as_ints(value: Any) -> Any:
    """A copy of a JSON value with floats of integral value (within 64 bits) as ints,
    walked without recursion; frozen here from archiver.tool_sets."""

    def scalar(v: Any) -> Any:
        if isinstance(v, float) and v.is_integer() and abs(v) < 2**63:
            return int(v)
        return v

    if not isinstance(value, dict | list):
        return scalar(value)
    copy: Any = {} if isinstance(value, dict) else []
    stack: list[tuple[Any, Any]] = [(value, copy)]
    while stack:
        source, target = stack.pop()
        pairs = source.items() if isinstance(source, dict) else enumerate(source)
        for key, v in pairs:
            if isinstance(v, dict | list):
                new: Any = {} if isinstance(v, dict) else []
                stack.append((v, new))
            else:
                new = scalar(v)
            if isinstance(target, dict):
                target[key] = new
            else:
                target.append(new)
    return copy


def _digest(text: str) -> str:
    """archiver.tool_sets.tools_digest of a value's JSON text, frozen here: SHA-256 of the
    canonical JSON (keys sorted, no whitespace, integral floats as ints: jsonb has
    rewritten ``1e18`` and ``-0.0``, which the writer reads from the body as floats)."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:  # integers beyond 64 bits, nesting beyond orjson's limit
        value = json.loads(text)
    value = _integral_floats_as_ints(value)
    try:
        canonical = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        canonical = json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()
    return hashlib.sha256(canonical).hexdigest()


def _move_tools(bind: Any, dialect: str) -> None:
    """Fill ``tool_sets`` and ``responses.tool_set_id`` from ``responses.tools``."""
    has_tools = "tools IS NOT NULL AND " + (
        "jsonb_typeof(tools) <> 'null'" if dialect == "postgresql" else "json_type(tools) <> 'null'"
    )
    if dialect == "postgresql":
        bind.exec_driver_sql(
            "CREATE TEMPORARY TABLE tool_set_moves (n bigserial PRIMARY KEY, tools jsonb NOT NULL, "
            "first_seen_at timestamptz NOT NULL, sha256 text)"
        )
        as_text = "tools::text"
    else:
        bind.exec_driver_sql(
            "CREATE TEMPORARY TABLE tool_set_moves (n INTEGER PRIMARY KEY, tools TEXT NOT NULL, "
            "first_seen_at TEXT NOT NULL, sha256 TEXT)"
        )
        as_text = "tools"
    # Each distinct value once, with the first time a response holding it was archived.
    bind.exec_driver_sql(
        "INSERT INTO tool_set_moves (tools, first_seen_at) "
        f"SELECT tools, min(archived_at) FROM responses WHERE {has_tools} GROUP BY tools"
    )
    # Digests are computed here (neither database has this canonical form), a batch at a
    # time: at most DIGEST_BATCH values and DIGEST_BATCH_BYTES of them (or one larger value).
    last = 0
    while True:
        sizes = bind.execute(
            sa.text(
                f"SELECT n, length({as_text}) FROM tool_set_moves WHERE n > :last "
                f"ORDER BY n LIMIT {DIGEST_BATCH}"
            ),
            {"last": last},
        ).all()
        if not sizes:
            break
        upto, held = sizes[0][0], 0
        for n, size in sizes:
            if held and held + int(size) > DIGEST_BATCH_BYTES:
                break
            upto, held = n, held + int(size)
        rows = bind.execute(
            sa.text(f"SELECT n, {as_text} FROM tool_set_moves WHERE n > :last AND n <= :upto ORDER BY n"),
            {"last": last, "upto": upto},
        ).all()
        bind.execute(
            sa.text("UPDATE tool_set_moves SET sha256 = :sha WHERE n = :n"),
            [{"n": n, "sha": _digest(text)} for n, text in rows],
        )
        last = rows[-1][0]
    # Values with one digest (the same array with its keys in another order) become one set.
    if dialect == "postgresql":
        firsts = (
            "SELECT DISTINCT ON (sha256) sha256, tools, first_seen_at FROM tool_set_moves "
            "ORDER BY sha256, first_seen_at"
        )
    else:  # SQLite: the bare columns come from the row with min(first_seen_at)
        firsts = (
            "SELECT sha256, tools, min(first_seen_at) AS first_seen_at FROM tool_set_moves GROUP BY sha256"
        )
    bind.exec_driver_sql(
        "INSERT INTO tool_sets (sha256, tools, first_seen_at) "
        f"SELECT sha256, tools, first_seen_at FROM ({firsts}) AS f ORDER BY first_seen_at, sha256"
    )
    if dialect == "postgresql":
        bind.exec_driver_sql(
            "UPDATE responses AS r SET tool_set_id = t.id FROM tool_set_moves AS m "
            "JOIN tool_sets AS t ON t.sha256 = m.sha256 WHERE r.tools = m.tools"
        )
    else:
        bind.exec_driver_sql("CREATE INDEX ix_tool_set_moves_tools ON tool_set_moves (tools)")
        bind.exec_driver_sql(
            "UPDATE responses SET tool_set_id = (SELECT t.id FROM tool_set_moves AS m "
            "JOIN tool_sets AS t ON t.sha256 = m.sha256 WHERE m.tools = responses.tools) "
            "WHERE tools IS NOT NULL"
        )
    bind.exec_driver_sql("DROP TABLE tool_set_moves")
    left = bind.exec_driver_sql(
        f"SELECT count(*) FROM responses WHERE {has_tools} AND tool_set_id IS NULL"
    ).scalar()
    if left:  # never expected: refuse to drop a value rather than lose it
        raise RuntimeError(f"migration 0015: {left} responses' tools found no tool set; nothing was changed")


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS response_tools")
    op.add_column("responses", sa.Column("tools", _json(), nullable=True))
    op.execute(
        "UPDATE responses SET tools = "
        "(SELECT t.tools FROM tool_sets AS t WHERE t.id = responses.tool_set_id) "
        "WHERE tool_set_id IS NOT NULL"
    )
    if op.get_bind().dialect.name == "sqlite" and sqlite3.sqlite_version_info < (3, 35):
        with op.batch_alter_table("responses") as batch:
            batch.drop_column("tool_set_id")
    else:
        op.execute('ALTER TABLE responses DROP COLUMN "tool_set_id"')
    op.drop_table("tool_sets")
