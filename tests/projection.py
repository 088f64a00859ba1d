"""Checks that the normalized rows are a projection of a body: every field reachable,
no element stored whole, opaque payloads only in ``raw`` (issue 17.2).

Rows are given as ``{table name: [row dict, ...]}``, either straight from
``normalize()`` or read back from a database (JSON columns parsed).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

import orjson

from archiver.normalize import OPAQUE_KEY, NormalizedResponse, is_opaque, scrub_surrogates
from archiver.schema import STORE_COLUMNS

Tables = Mapping[str, list[dict[str, Any]]]

ALIASES: dict[str, set[str]] = {
    "file_index": {"index"},
    "result_index": {"index"},
    "url": {"urls", "sources"},
    "query": {"queries"},
    "count": {"num_requests"},
}
"""Column -> the JSON keys (besides its own name) whose values it holds."""


def parse_body(raw: bytes) -> Any:
    """The body as the normalizer sees it (lone surrogates as U+FFFD)."""
    return scrub_surrogates(orjson.loads(raw))


def projected(result: NormalizedResponse) -> dict[str, list[dict[str, Any]]]:
    """The rows of a ``normalize()`` result as tables: its response row, its tool set
    (``tool_sets``, where the store keeps ``tools``) and its child rows."""
    tool_sets = [] if result.tools is None else [{"tools": result.tools}]
    return {"responses": [result.response], "tool_sets": tool_sets, **result.children}


def leaves(value: Any, key: str | None = None) -> Iterator[tuple[str | None, Any]]:
    """(nearest object key, value) of every scalar in a JSON value."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from leaves(v, k)
    elif isinstance(value, list):
        for v in value:
            yield from leaves(v, key)
    else:
        yield key, value


def _comparable(value: Any) -> tuple[Any, ...]:
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, (int, float)):
        return ("n", float(value))
    if isinstance(value, datetime):
        return ("n", value.timestamp())
    if isinstance(value, str):
        return ("s", value.replace("\x00", "\ufffd"))  # PostgreSQL's stand-in for NUL
    return ("other", repr(value))


def _json_of_text(value: str) -> Any:
    if not value or value[0] not in "[{":
        return None
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return None


def _walk_json(value: Any) -> Iterator[Any]:
    """Every object, array and scalar inside a JSON value, itself included."""
    yield value
    if isinstance(value, dict):
        for v in value.values():
            yield from _walk_json(v)
    elif isinstance(value, list):
        for v in value:
            yield from _walk_json(v)


def _row_values(tables: Tables) -> Iterator[tuple[str, str, Any]]:
    """(table, column, value) of every non-NULL value, the store's columns of responses left out."""
    for table, rows in tables.items():
        for row in rows:
            for column, value in row.items():
                if value is None or (table == "responses" and column in STORE_COLUMNS):
                    continue
                yield table, column, value


class Found:
    """What the rows hold, as (key, value) pairs, plus the hashes of opaque stubs."""

    def __init__(self, tables: Tables) -> None:
        self.pairs: set[tuple[str | None, tuple[Any, ...]]] = set()
        self.stubs: set[str] = set()
        self.json_values: list[Any] = []
        self.strings: list[tuple[str, str, str]] = []
        for table, column, value in _row_values(tables):
            names = {column} | ALIASES.get(column, set())
            if isinstance(value, (dict, list)):
                self._add_json(value, column, table)
                continue
            for name in names:
                self.pairs.add((name, _comparable(value)))
            if isinstance(value, str):
                self.strings.append((table, column, value))
                parsed = _json_of_text(value)
                if parsed is not None:
                    self._add_json(parsed, column, table)
        for tool_row in tables.get("tool_usage") or []:
            if tool_row.get("count") is not None:  # xAI {"web_search_calls": 2}: the tool is the key
                self.pairs.add((tool_row["tool"], _comparable(tool_row["count"])))

    def _add_json(self, value: Any, column: str, table: str) -> None:
        self.json_values.append(value)
        for node in _walk_json(value):
            if isinstance(node, dict) and isinstance(node.get(OPAQUE_KEY), dict):
                self.stubs.add(node[OPAQUE_KEY]["sha256"])
            elif isinstance(node, str):
                self.strings.append((table, column, node))
        for key, leaf in leaves(value):
            self.pairs.add((key if key is not None else column, _comparable(leaf)))

    def holds(self, key: str | None, value: Any) -> bool:
        return (key, _comparable(value)) in self.pairs


def missing_fields(body: dict[str, Any], tables: Tables) -> list[str]:
    """Leaves of ``body`` found neither in a column, nor in a JSON column or ``extra``, nor
    (opaque payloads) as a stub with their SHA-256. Empty when the projection is complete."""
    found = Found(tables)
    missing: list[str] = []

    def check(key: str | None, value: Any) -> None:
        if value is None:
            return  # JSON null: a NULL column or nothing at all says the same
        if isinstance(value, str) and is_opaque(value):
            digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
            if digest not in found.stubs:
                missing.append(f"opaque {key}: {len(value)} chars, no stub")
            return
        if found.holds(key, value):
            return
        if isinstance(value, str):
            parsed = _json_of_text(value)
            if isinstance(parsed, (dict, list)):  # JSON text spread into rows (image results)
                for inner_key, inner in leaves(parsed, key):
                    check(inner_key, inner)
                return
        missing.append(f"{key}={value!r:.80}")

    for key, value in leaves(body):
        check(key, value)
    return missing


def _objects(value: Any) -> list[dict[str, Any]]:
    return [e for e in value if isinstance(e, dict) and len(e) >= 2] if isinstance(value, list) else []


def elements(body: dict[str, Any]) -> list[Any]:
    """Every object of the body that became a row of its own (with at least two keys)."""
    found: list[Any] = []
    items = _objects(body.get("output"))
    found += items
    spread_by_type = {
        "reasoning": ("summary",),
        "code_interpreter_call": ("outputs",),
        "mcp_list_tools": ("tools",),
        "file_search_call": ("results",),
    }
    for item in items:
        parts = _objects(item.get("content"))
        found += parts
        for part in parts:
            found += _objects(part.get("annotations"))
        for key in spread_by_type.get(item.get("type"), ()):
            found += _objects(item.get(key))
        action = item.get("action")
        if item.get("type") == "web_search_call" and isinstance(action, dict):
            if len(action) >= 2:
                found.append(action)
            found += _objects(action.get("sources"))
    usage = body.get("usage")
    if isinstance(usage, dict):
        found += _objects(usage.get("x_details"))
    return found


def copies_of_elements(body: dict[str, Any], tables: Tables) -> list[str]:
    """Elements of the body that some row holds whole (in a JSON column or ``extra``)."""
    wanted = {orjson.dumps(e, option=orjson.OPT_SORT_KEYS) for e in elements(body)}
    found = Found(tables)
    copies: list[str] = []
    for value in found.json_values:
        for node in _walk_json(value):
            if isinstance(node, dict) and orjson.dumps(node, option=orjson.OPT_SORT_KEYS) in wanted:
                copies.append(orjson.dumps(node).decode()[:120])
    return copies


def opaque_outside_raw(tables: Tables) -> list[str]:
    """Opaque payloads (base64, ``data:`` URLs) found in a normalized row."""
    return [f"{t}.{c}: {s[:40]}..." for t, c, s in Found(tables).strings if is_opaque(s)]


def assert_projection(body: dict[str, Any], tables: Tables) -> None:
    """Every field of ``body`` reachable, no element stored whole, no opaque payload outside raw."""
    assert not missing_fields(body, tables), missing_fields(body, tables)[:20]
    assert not copies_of_elements(body, tables), copies_of_elements(body, tables)[:5]
    assert not opaque_outside_raw(tables), opaque_outside_raw(tables)[:5]
    for table, rows in tables.items():
        for row in rows:
            extra = row.get("extra")
            if isinstance(extra, dict):
                doubled = [k for k in extra if k in row and k != "extra" and row[k] is not None]
                assert not doubled, (table, doubled)
