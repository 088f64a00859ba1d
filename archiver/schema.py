"""The archive tables, as SQLAlchemy Core tables (no ORM).

One row in ``responses`` per response ID, and child tables that spread the rest of the
Response object into rows: output items, their content parts and annotations, reasoning
summaries, tool-call details, and usage breakdowns. ``archiver.normalize`` turns a parsed
body into rows for exactly these columns; ``docs/schema.md`` documents every column.

Rules every child table follows:

- a ``response_id`` column and a composite primary key that starts with it;
- positions are 0-based indexes into the JSON array they come from;
- an ``extra`` JSON column holds the element's fields that no column maps (unknown,
  provider-specific, future), never the whole element: ``responses.raw`` is the one
  copy of everything (see ``archiver.normalize``);
- no foreign keys: the writer deletes and re-inserts a response's children in the
  transaction that upserts the response, which keeps the rows consistent without them;
- on SQLite ``WITHOUT ROWID``: the primary key is the table, no second copy of it in an index.

Input items are content-addressed: ``input_item_contents`` holds each distinct item
once, ``response_input_items`` each response's ordered list of item hashes, and the
``input_items`` view (:data:`input_items`, in :data:`view_metadata`) joins them. So is
the ``tools`` array every Response echoes from its request (an app sends the same one on
every request): ``tool_sets`` holds each distinct value once, ``responses.tool_set_id``
names it.

Free text is ``Text``: a length limit would turn an unusually long provider value into a
failed insert on PostgreSQL. Only ``responses.id`` and the ``response_id`` keys are bounded,
by the 256 characters the CLI accepts for an ID.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    TypeDecorator,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.types import TypeEngine

__all__ = [
    "CHILD_STORE_COLUMNS",
    "CHILD_TABLES",
    "STORE_COLUMNS",
    "JSONDoc",
    "annotations",
    "archive_changes",
    "archive_dictionaries",
    "archive_meta",
    "billing_details",
    "code_interpreter_outputs",
    "conflict_insert",
    "content_parts",
    "export_cursors",
    "file_search_queries",
    "file_search_results",
    "image_search_results",
    "input_item_contents",
    "input_item_lists",
    "input_items",
    "is_json_type",
    "mcp_tools",
    "metadata",
    "output_items",
    "reasoning_summaries",
    "response_input_items",
    "responses",
    "tool_sets",
    "tool_usage",
    "view_metadata",
    "web_extractor_urls",
    "web_search_actions",
    "web_search_sources",
]

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class JSONDoc(TypeDecorator[Any]):
    """JSON column type: ``jsonb`` on PostgreSQL, JSON text on SQLite.

    ``none_as_null``: Python None becomes SQL NULL, not the JSON text 'null', so that
    ``WHERE error IS NULL`` means what it says. JSON nulls nested inside a document are kept.

    The same as ``JSON(none_as_null=True).with_variant(JSONB(none_as_null=True),
    "postgresql")``, except that the PostgreSQL dialect is imported only when a PostgreSQL
    engine uses the type: importing it cost every command on SQLite ~20 ms.
    """

    impl = JSON
    cache_ok = True

    def __init__(self) -> None:
        super().__init__(none_as_null=True)

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        """``JSONB`` on PostgreSQL, the generic ``JSON`` elsewhere."""
        if dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import JSONB

            return dialect.type_descriptor(JSONB(none_as_null=True))
        return dialect.type_descriptor(JSON(none_as_null=True))


def is_json_type(type_: Any) -> bool:
    """Whether a column type holds JSON: ``JSON`` itself, or a type built on it like :class:`JSONDoc`."""
    return isinstance(type_, JSON) or isinstance(getattr(type_, "impl", None), JSON)


ID = String(256)
"""Response IDs: 1 to 256 characters (see the CLI contract)."""


def sqlite_timestamp_text(value: datetime | None) -> str | None:
    """How an instant is stored on SQLite: UTC text without an offset, as SQLAlchemy's
    DATETIME reads it back, and without the fraction when it is zero.

    Providers date responses in whole seconds, so ``.000000`` cost 7 bytes a timestamp and
    as many in its index. Text order is unchanged: ``...:19`` sorts before ``...:19.5``
    and after ``...:18.9``.
    """
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat(" ", "microseconds" if value.microsecond else "seconds")


class _SqliteTimestamp(sqlite.DATETIME):
    """SQLite DATETIME written by :func:`sqlite_timestamp_text` (every write path alike)."""

    def bind_processor(self, dialect: Dialect) -> Any:
        return sqlite_timestamp_text


Timestamp = DateTime(timezone=True).with_variant(
    _SqliteTimestamp(timezone=True),  # type: ignore[no-untyped-call]  # SQLAlchemy leaves it untyped
    "sqlite",
)
"""UTC instants. PostgreSQL ``timestamptz``; SQLite text in UTC without an offset."""


def _response_id() -> Column[str]:
    return Column("response_id", ID, nullable=False)


def _position(name: str) -> Column[int]:
    return Column(name, Integer, nullable=False)


responses = Table(
    "responses",
    metadata,
    Column("id", ID, primary_key=True),
    Column("object", Text),
    Column("status", Text),
    Column("model", Text),
    Column("created_at", Timestamp, index=True),
    Column("completed_at", Timestamp),
    # usage, flattened (what no column or child row takes is in extra["usage"])
    Column("input_tokens", BigInteger),
    Column("cached_tokens", BigInteger),
    Column("cache_write_tokens", BigInteger),
    Column("output_tokens", BigInteger),
    Column("reasoning_tokens", BigInteger),
    Column("total_tokens", BigInteger),
    # scalar request echoes and response settings
    Column("background", Boolean),
    Column("service_tier", Text),
    Column("store", Boolean),
    Column("temperature", Float),
    Column("top_p", Float),
    Column("frequency_penalty", Float),
    Column("presence_penalty", Float),
    Column("top_logprobs", Integer),
    Column("parallel_tool_calls", Boolean),
    Column("truncation", Text),
    Column("max_output_tokens", BigInteger),
    Column("max_tool_calls", BigInteger),
    Column("previous_response_id", Text),
    Column("user", Text),
    Column("safety_identifier", Text),
    Column("prompt_cache_key", Text),
    Column("prompt_cache_retention", Text),
    # scalars lifted out of structured fields, for filtering without JSON functions
    Column("error_code", Text),
    Column("error_message", Text),
    Column("incomplete_reason", Text),
    Column("reasoning_effort", Text),
    Column("reasoning_summary", Text),
    Column("conversation_id", Text),
    # structured fields, as given
    Column("error", JSONDoc()),
    Column("incomplete_details", JSONDoc()),
    Column("instructions", JSONDoc()),
    Column("metadata", JSONDoc()),
    Column("tool_choice", JSONDoc()),
    # The body's tools, stored once per distinct value in tool_sets (NULL: absent or null).
    Column("tool_set_id", Integer),
    Column("reasoning", JSONDoc()),
    Column("text", JSONDoc()),
    Column("prompt", JSONDoc()),
    Column("prompt_cache_options", JSONDoc()),
    Column("conversation", JSONDoc()),
    Column("moderation", JSONDoc()),
    Column("billing", JSONDoc()),
    Column("content_filters", JSONDoc()),
    Column("extra", JSONDoc()),
    # filled by the store, not by normalize()
    Column("raw", LargeBinary, nullable=False),
    Column("raw_sha256", String(64), nullable=False),  # of the body as received, not as stored
    # How raw is stored (see archiver/codec.py): NULL or 'identity' (as received), 'zstd',
    # 'zstd+dict' (with archive_dictionaries row raw_dict_id).
    Column("raw_codec", Text),
    Column("raw_dict_id", Integer),
    Column("fetched_at", Timestamp, nullable=False),
    Column("archived_at", Timestamp, nullable=False),
    # Change tracking: a new, higher value every time the archived content changes (a
    # re-fetch with identical bytes keeps it). Assigned in commit order (see store.py).
    Column("change_seq", BigInteger, nullable=False, server_default="0"),
    # SHA-256 of the input items as fetched (None: never fetched); see input_items.
    Column("input_items_sha256", String(64)),
    # True: the body holds a registered secret (a key the server echoed) that the derived
    # rows mask; a rebuild that does not know it leaves them as they are (archiver.rebuild).
    Column("secret_masked", Boolean),
    # Exports page through (change_seq, id): rows can share a change_seq (migrated ones).
    Index("ix_responses_change_seq", "change_seq", "id"),
)

STORE_COLUMNS: frozenset[str] = frozenset(
    {
        "raw",
        "raw_sha256",
        "raw_codec",
        "raw_dict_id",
        "fetched_at",
        "archived_at",
        "change_seq",
        "input_items_sha256",
        "tool_set_id",
    }
)
"""Columns of ``responses`` that the store fills; ``normalize()`` returns all the others."""

CHILD_STORE_COLUMNS: frozenset[str] = frozenset({"change_seq"})
"""Columns of the child tables that the store fills (the response's ``change_seq``)."""

output_items = Table(
    "output_items",
    metadata,
    _response_id(),
    _position("position"),
    Column("id", Text),
    Column("type", Text),
    Column("role", Text),
    Column("status", Text),
    Column("phase", Text),
    Column("name", Text),
    Column("namespace", Text),
    Column("call_id", Text),
    Column("arguments", Text),
    Column("server_label", Text),
    Column("approval_request_id", Text),
    Column("code", Text),
    Column("container_id", Text),
    Column("goal", Text),
    Column("input", Text),
    Column("output", Text),
    Column("error", Text),
    Column("execution", Text),
    Column("created_by", Text),
    Column("extra", JSONDoc()),
    PrimaryKeyConstraint("response_id", "position"),
    sqlite_with_rowid=False,
)

content_parts = Table(
    "content_parts",
    metadata,
    _response_id(),
    _position("item_position"),
    _position("position"),
    Column("item_type", Text),
    Column("type", Text),
    Column("text", Text),
    Column("refusal", Text),
    Column("logprobs", JSONDoc()),
    Column("extra", JSONDoc()),
    PrimaryKeyConstraint("response_id", "item_position", "position"),
    sqlite_with_rowid=False,
)

# The name shadows `from __future__ import annotations`, harmlessly at run time.
annotations = Table(  # type: ignore[assignment]
    "annotations",
    metadata,
    _response_id(),
    _position("item_position"),
    _position("part_position"),
    _position("position"),
    Column("type", Text),
    Column("url", Text),
    Column("title", Text),
    Column("start_index", Integer),
    Column("end_index", Integer),
    Column("file_id", Text),
    Column("filename", Text),
    Column("container_id", Text),
    Column("file_index", Integer),
    Column("extra", JSONDoc()),
    PrimaryKeyConstraint("response_id", "item_position", "part_position", "position"),
    sqlite_with_rowid=False,
)

reasoning_summaries = Table(
    "reasoning_summaries",
    metadata,
    _response_id(),
    _position("item_position"),
    _position("position"),
    Column("type", Text),
    Column("text", Text),
    Column("extra", JSONDoc()),
    PrimaryKeyConstraint("response_id", "item_position", "position"),
    sqlite_with_rowid=False,
)

web_search_actions = Table(
    "web_search_actions",
    metadata,
    _response_id(),
    _position("item_position"),
    Column("type", Text),
    Column("query", Text),
    Column("queries", JSONDoc()),
    Column("url", Text),
    Column("pattern", Text),
    Column("extra", JSONDoc()),
    PrimaryKeyConstraint("response_id", "item_position"),
    sqlite_with_rowid=False,
)

web_search_sources = Table(
    "web_search_sources",
    metadata,
    _response_id(),
    _position("item_position"),
    _position("position"),
    Column("type", Text),
    Column("url", Text),
    Column("title", Text),
    Column("extra", JSONDoc()),
    PrimaryKeyConstraint("response_id", "item_position", "position"),
    sqlite_with_rowid=False,
)

code_interpreter_outputs = Table(
    "code_interpreter_outputs",
    metadata,
    _response_id(),
    _position("item_position"),
    _position("position"),
    Column("type", Text),
    Column("logs", Text),
    Column("url", Text),
    Column("extra", JSONDoc()),
    PrimaryKeyConstraint("response_id", "item_position", "position"),
    sqlite_with_rowid=False,
)

web_extractor_urls = Table(
    "web_extractor_urls",
    metadata,
    _response_id(),
    _position("item_position"),
    _position("position"),
    Column("url", Text),
    Column("extra", JSONDoc()),
    PrimaryKeyConstraint("response_id", "item_position", "position"),
    sqlite_with_rowid=False,
)

image_search_results = Table(
    "image_search_results",
    metadata,
    _response_id(),
    _position("item_position"),
    _position("position"),
    Column("title", Text),
    Column("url", Text),
    Column("result_index", Integer),
    Column("extra", JSONDoc()),
    PrimaryKeyConstraint("response_id", "item_position", "position"),
    sqlite_with_rowid=False,
)

mcp_tools = Table(
    "mcp_tools",
    metadata,
    _response_id(),
    _position("item_position"),
    _position("position"),
    Column("server_label", Text),
    Column("name", Text),
    Column("description", Text),
    Column("extra", JSONDoc()),
    PrimaryKeyConstraint("response_id", "item_position", "position"),
    sqlite_with_rowid=False,
)

file_search_queries = Table(
    "file_search_queries",
    metadata,
    _response_id(),
    _position("item_position"),
    _position("position"),
    Column("query", Text),
    Column("extra", JSONDoc()),
    PrimaryKeyConstraint("response_id", "item_position", "position"),
    sqlite_with_rowid=False,
)

file_search_results = Table(
    "file_search_results",
    metadata,
    _response_id(),
    _position("item_position"),
    _position("position"),
    Column("file_id", Text),
    Column("filename", Text),
    Column("score", Float),
    Column("text", Text),
    Column("attributes", JSONDoc()),
    Column("extra", JSONDoc()),
    PrimaryKeyConstraint("response_id", "item_position", "position"),
    sqlite_with_rowid=False,
)

billing_details = Table(
    "billing_details",
    metadata,
    _response_id(),
    _position("position"),
    Column("x_billing_type", Text),
    Column("input_tokens", BigInteger),
    Column("output_tokens", BigInteger),
    Column("total_tokens", BigInteger),
    Column("cached_tokens", BigInteger),
    Column("reasoning_tokens", BigInteger),
    Column("extra", JSONDoc()),
    PrimaryKeyConstraint("response_id", "position"),
    sqlite_with_rowid=False,
)

tool_usage = Table(
    "tool_usage",
    metadata,
    _response_id(),
    Column("source", Text, nullable=False),
    Column("tool", Text, nullable=False),
    Column("count", BigInteger),
    Column("input_tokens", BigInteger),
    Column("output_tokens", BigInteger),
    Column("total_tokens", BigInteger),
    Column("extra", JSONDoc()),
    PrimaryKeyConstraint("response_id", "source", "tool"),
    sqlite_with_rowid=False,
)

CHILD_TABLES: tuple[Table, ...] = (  # type: ignore[assignment]  # `annotations`: see above
    output_items,
    content_parts,
    annotations,
    reasoning_summaries,
    web_search_actions,
    web_search_sources,
    code_interpreter_outputs,
    web_extractor_urls,
    image_search_results,
    mcp_tools,
    file_search_queries,
    file_search_results,
    billing_details,
    tool_usage,
)
"""Every table of the rows ``normalize()`` makes from a body, parents before children."""

for _table in CHILD_TABLES:
    # Child rows are replaced together with their response, so they carry its change_seq.
    _table.append_column(Column("change_seq", BigInteger, nullable=False, server_default="0"))
del _table

input_item_contents = Table(
    "input_item_contents",
    metadata,
    Column("sha256", String(64), primary_key=True),
    Column("item", JSONDoc()),
    sqlite_with_rowid=False,
    comment="Each distinct input item once, keyed by the SHA-256 of its canonical JSON",
)

response_input_items = Table(
    "response_input_items",
    metadata,
    _response_id(),
    _position("position"),
    Column("item_sha256", String(64), nullable=False),
    PrimaryKeyConstraint("response_id", "position"),
    sqlite_with_rowid=False,
    comment="GET /responses/{id}/input_items (only with --with-input-items), oldest first",
)

input_item_lists = Table(
    "input_item_lists",
    metadata,
    _response_id(),
    # DashScope's lists give the response's creation time in milliseconds; stored as a time.
    Column("created_at", Timestamp),
    Column("model", Text),
    Column("previous_response_id", ID),
    Column("extra", JSONDoc()),
    # Its response's change_seq, kept equal when the response is re-archived without its list.
    Column("change_seq", BigInteger, nullable=False, server_default="0"),
    PrimaryKeyConstraint("response_id"),
    sqlite_with_rowid=False,
    comment="The fields an input-item list carries besides its items (DashScope: model, created_at)",
)

tool_sets = Table(
    "tool_sets",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    # Of the canonical JSON (archiver.tool_sets.tools_digest): keys sorted, no whitespace.
    Column("sha256", String(64), nullable=False, unique=True),
    Column("tools", JSONDoc(), nullable=False),
    Column("first_seen_at", Timestamp, nullable=False),
    comment="Each distinct tools array of the responses once; responses.tool_set_id names it",
)

view_metadata = MetaData()
"""Views (created by the migrations, not by ``metadata.create_all``), for reading them."""

input_items = Table(
    "input_items",
    view_metadata,
    _response_id(),
    _position("position"),
    Column("id", Text),
    Column("type", Text),
    Column("role", Text),
    Column("status", Text),
    Column("call_id", Text),
    Column("text", Text),
    Column("item", JSONDoc()),
    Column("change_seq", BigInteger, nullable=False),
    PrimaryKeyConstraint("response_id", "position"),
    comment="View: each response's input items in order, as one row per item",
)

archive_changes = Table(
    "archive_changes",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("seq", BigInteger, nullable=False),
    comment="Change-sequence counter; its row lock orders change_seq by commit order",
)

archive_dictionaries = Table(
    "archive_dictionaries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("created_at", Timestamp, nullable=False),
    Column("size", Integer, nullable=False),
    # Bodies written (archive_changes.seq) when it was trained: the next one is due at 10x.
    Column("trained_on", BigInteger, nullable=False),
    Column("samples", Integer, nullable=False),
    Column("data", LargeBinary, nullable=False),
    comment="zstd dictionaries that responses.raw is compressed with; see archiver/codec.py",
)

export_cursors = Table(
    "export_cursors",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("last_seq", BigInteger, nullable=False, server_default="0"),
    Column("batch", BigInteger, nullable=False, server_default="0"),
    Column("exported_at", Timestamp),
    comment="What `archiver export --cursor NAME` has exported so far",
)

archive_meta = Table(
    "archive_meta",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
    comment="Facts about the whole archive: its normalize mode, the position of an unfinished "
    "renormalize; see archiver/projection.py",
)


def conflict_insert(conn: Connection, table: Table) -> Any:
    """``INSERT`` into ``table`` in the dialect of ``conn``: one that takes
    ``on_conflict_do_nothing`` and ``on_conflict_do_update`` (``excluded``) on PostgreSQL
    and SQLite alike."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(table)
    return sqlite.insert(table)
