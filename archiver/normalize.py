"""Turn a parsed Response body into rows for the archive tables.

``normalize(body)`` is pure: no I/O, no clock, no database. It returns one row for
``responses`` (every column except the ones the store fills: ``raw``, ``raw_sha256``,
``fetched_at``, ``archived_at``, ``tool_set_id``), a list of rows for every table in
``schema.CHILD_TABLES``, and the body's ``tools``, which the store keeps once per distinct
value (``tool_sets``). Every row has exactly its table's column keys, so the writer can
hand each list to one executemany INSERT.

The rows are a projection of the body, which the store keeps byte-exact in ``raw``:
nothing is stored twice, and nothing is out of reach. Each value lands in one place: a
typed column (when it has the expected JSON type), the rows of a child table (arrays such
as ``output``, ``content``, ``usage.x_details``), or the row's ``extra`` object, which
holds exactly the fields no column or child row took (unknown, provider-specific, future
fields, and values of an unexpected type), never the element's whole subtree. Long
opaque payloads (base64 images, encrypted reasoning, ``data:`` URLs; see
:func:`is_opaque`) are left in ``raw`` only: where they were, a stub records their
length and SHA-256.

The rows reference the parsed values; nothing is copied, so do not mutate the body while
the rows are in use.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from archiver.errors import NormalizationError
from archiver.jsontext import json_bytes, json_text, loads
from archiver.schema import CHILD_TABLES, STORE_COLUMNS, responses

__all__ = ["NormalizedResponse", "is_opaque", "normalize", "normalize_input_items", "output_text"]

Row = dict[str, Any]
Rows = dict[str, list[Row]]


@dataclass(frozen=True, slots=True)
class NormalizedResponse:
    """The rows one Response body becomes.

    Attributes:
        response: every column of ``responses`` except ``raw``, ``raw_sha256``,
            ``fetched_at`` and ``archived_at``.
        children: table name -> rows, for every table in ``schema.CHILD_TABLES``
            (an empty list when the body has nothing for that table).
    """

    response: dict[str, Any]
    children: dict[str, list[dict[str, Any]]]
    tools: Any = None
    """The body's ``tools`` (opaque payloads aside), or None when absent or JSON null.

    Not a column: the store keeps each distinct value once, in ``tool_sets``, and sets
    ``responses.tool_set_id`` (an empty array is a tool set too)."""


# --- coercion into typed columns: the value, or None when it has another JSON type ---

_INT32_MIN: Final = -(2**31)
_INT32_MAX: Final = 2**31 - 1
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1


def _text(value: Any) -> str | None:
    return value if type(value) is str else None


def _bool(value: Any) -> bool | None:
    return value if type(value) is bool else None


def _int_in(value: Any, low: int, high: int) -> int | None:
    # type() rather than isinstance(): bool is an int subclass and must not count as one.
    kind = type(value)
    if kind is int:
        return value if low <= value <= high else None
    if kind is float and value.is_integer() and low <= value <= high:
        return int(value)
    return None


def _bigint(value: Any) -> int | None:
    return _int_in(value, _INT64_MIN, _INT64_MAX)


def _int32(value: Any) -> int | None:
    return _int_in(value, _INT32_MIN, _INT32_MAX)


def _float(value: Any) -> float | None:
    kind = type(value)
    if kind is float:
        return float(value)
    if kind is int:
        try:
            return float(value)
        except OverflowError:
            return None
    return None


def _timestamp(value: Any) -> datetime | None:
    """Unix seconds (int or float) as an aware UTC datetime."""
    kind = type(value)
    if kind is int or kind is float:
        try:
            return datetime.fromtimestamp(value, tz=UTC)
        except (OverflowError, OSError, ValueError):
            return None
    return None


def _json_text(value: Any) -> str | None:
    """A string as given; any other JSON value as its compact JSON text."""
    if value is None or type(value) is str:
        return value
    return json_text(value)


def _dict_at(mapping: Mapping[str, Any], *keys: str) -> dict[str, Any] | None:
    """The first of ``mapping[key]`` that is an object."""
    for key in keys:
        value = mapping.get(key)
        if type(value) is dict:
            return value
    return None


# --- responses ---

_RESPONSE_SCALARS: Final[dict[str, Callable[[Any], Any]]] = {
    "object": _text,
    "status": _text,
    "model": _text,
    "created_at": _timestamp,
    "completed_at": _timestamp,
    "background": _bool,
    "service_tier": _text,
    "store": _bool,
    "temperature": _float,
    "top_p": _float,
    "frequency_penalty": _float,
    "presence_penalty": _float,
    "top_logprobs": _int32,
    "parallel_tool_calls": _bool,
    "truncation": _text,
    "max_output_tokens": _bigint,
    "max_tool_calls": _bigint,
    "previous_response_id": _text,
    "user": _text,
    "safety_identifier": _text,
    "prompt_cache_key": _text,
    "prompt_cache_retention": _text,
}
"""Top-level keys stored in a typed column of the same name."""

_RESPONSE_JSON: Final[frozenset[str]] = frozenset(
    {
        "error",
        "incomplete_details",
        "instructions",
        "metadata",
        "tool_choice",
        "reasoning",
        "text",
        "prompt",
        "prompt_cache_options",
        "conversation",
        "moderation",
        "billing",
        "content_filters",
    }
)
"""Top-level keys stored as given (opaque payloads aside) in a JSON column of the same name."""

_RESPONSE_TEMPLATE: Final[Row] = dict.fromkeys(
    column.name for column in responses.columns if column.name not in STORE_COLUMNS
)
_CHILD_TABLE_NAMES: Final[tuple[str, ...]] = tuple(table.name for table in CHILD_TABLES)


def normalize(body: Mapping[str, Any]) -> NormalizedResponse:
    """Turn a parsed Response body into rows for the archive tables.

    Args:
        body: the parsed JSON body of ``GET /responses/{id}`` (any provider).

    Returns:
        The ``responses`` row (without the store's columns) and the child rows.

    Raises:
        NormalizationError: the body is not a JSON object, or has no string ``id``.
    """
    if not isinstance(body, Mapping):
        raise NormalizationError("The response body is not a JSON object.")
    response_id = body.get("id")
    if type(response_id) is not str:
        raise NormalizationError("The response body has no string 'id'.")

    row = _RESPONSE_TEMPLATE.copy()
    extra: Row = {}
    output: list[Any] | None = None
    usage: dict[str, Any] | None = None
    tool_usage: dict[str, Any] | None = None
    tools: Any = None
    for key, value in body.items():
        convert = _RESPONSE_SCALARS.get(key)
        kind = type(value)
        if convert is not None:
            if value is not None:
                typed = convert(value)
                if typed is None:
                    extra[key] = value  # odd type: keep it where a reader can find it
                row[key] = typed
        elif key in _RESPONSE_JSON:
            row[key] = without_opaque(value)
        elif key == "tools":
            tools = without_opaque(value)
        elif key == "output" and kind is list:
            output = value
        elif key == "usage" and kind is dict:
            usage = value
        elif key == "tool_usage" and kind is dict:
            tool_usage = value
        elif key != "id":
            # Includes a top-level "output_text" (an SDK serialization artefact): the SDK
            # computes it from the output, so the body's own value is kept here.
            extra[key] = without_opaque(value)
    row["id"] = response_id

    _lift_scalars(row)
    children: Rows = {name: [] for name in _CHILD_TABLE_NAMES}
    if output is not None:
        _output_rows(response_id, output, children)
    if usage is not None:
        rest = _usage_rows(response_id, usage, row, children)
        if rest:
            extra["usage"] = rest
    if tool_usage is not None:
        _tool_usage_rows(response_id, "tool_usage", tool_usage, children["tool_usage"])
    row["extra"] = extra or None
    return NormalizedResponse(response=row, children=children, tools=tools)


def _lift_scalars(row: Row) -> None:
    """Copy often-filtered scalars out of structured top-level fields."""
    error = row["error"]
    if type(error) is dict:
        row["error_code"] = _text(error.get("code"))
        row["error_message"] = _text(error.get("message"))
    incomplete = row["incomplete_details"]
    if type(incomplete) is dict:
        row["incomplete_reason"] = _text(incomplete.get("reason"))
    reasoning = row["reasoning"]
    if type(reasoning) is dict:
        row["reasoning_effort"] = _text(reasoning.get("effort"))
        row["reasoning_summary"] = _text(reasoning.get("summary"))
    conversation = row["conversation"]
    if type(conversation) is dict:
        row["conversation_id"] = _text(conversation.get("id"))
    elif type(conversation) is str:
        row["conversation_id"] = conversation


def _usage_rows(response_id: str, usage: dict[str, Any], row: Row, children: Rows) -> Row:
    """Token columns of ``responses``, billing and tool rows; returns what none of them took."""
    taken: dict[str, Any] = {}
    row["input_tokens"] = _take(usage, "input_tokens", _bigint, taken)
    row["output_tokens"] = _take(usage, "output_tokens", _bigint, taken)
    row["total_tokens"] = _take(usage, "total_tokens", _bigint, taken)
    _take_token_details(
        usage,
        ("input_tokens_details", "prompt_tokens_details"),
        ("cached_tokens", "cache_write_tokens"),
        row,
        taken,
    )
    _take_token_details(usage, _OUTPUT_DETAILS, ("reasoning_tokens",), row, taken)

    x_details = usage.get("x_details")
    if type(x_details) is list:
        taken["x_details"] = True
        billing = children["billing_details"]
        for position, detail in enumerate(x_details):
            billing.append(_billing_row(response_id, position, detail))

    tool_rows = children["tool_usage"]
    x_tools = usage.get("x_tools")
    if type(x_tools) is dict:
        taken["x_tools"] = True
        _tool_usage_rows(response_id, "usage.x_tools", x_tools, tool_rows)
    server_side = usage.get("server_side_tool_usage_details")
    if type(server_side) is dict:
        taken["server_side_tool_usage_details"] = True
        source = "usage.server_side_tool_usage_details"
        _tool_usage_rows(response_id, source, server_side, tool_rows)
    return _remainder(usage, taken)


_OUTPUT_DETAILS = ("output_tokens_details", "completion_tokens_details")


def _take_token_details(
    usage: dict[str, Any], keys: tuple[str, ...], columns: tuple[str, ...], row: Row, taken: dict[str, Any]
) -> None:
    """The token ``columns`` from the first of ``keys`` that holds an object (OpenAI's and
    Chat Completions' names for the same details), recording in ``taken`` what they took."""
    for key in keys:
        details = usage.get(key)
        if type(details) is dict:
            kept: dict[str, Any] = {}
            for column in columns:
                row[column] = _take(details, column, _bigint, kept)
            taken[key] = kept
            return


def _billing_row(response_id: str, position: int, detail: Any) -> Row:
    row: Row = {"response_id": response_id, "position": position}
    if type(detail) is not dict:
        row.update(
            x_billing_type=None,
            input_tokens=None,
            output_tokens=None,
            total_tokens=None,
            cached_tokens=None,
            reasoning_tokens=None,
            extra=_element_extra(detail),
        )
        return row
    taken: dict[str, Any] = {}
    row["x_billing_type"] = _take(detail, "x_billing_type", _text, taken)
    row["input_tokens"] = _take(detail, "input_tokens", _bigint, taken)
    row["output_tokens"] = _take(detail, "output_tokens", _bigint, taken)
    row["total_tokens"] = _take(detail, "total_tokens", _bigint, taken)
    row["cached_tokens"] = row["reasoning_tokens"] = None
    _take_token_details(
        detail, ("prompt_tokens_details", "input_tokens_details"), ("cached_tokens",), row, taken
    )
    _take_token_details(detail, _OUTPUT_DETAILS, ("reasoning_tokens",), row, taken)
    row["extra"] = _remainder(detail, taken) or None
    return row


def _tool_usage_rows(response_id: str, source: str, usage_by_tool: dict[str, Any], rows: list[Row]) -> None:
    """One row per tool: DashScope ``{"web_search": {"count": 1}}``, OpenAI
    ``{"web_search": {"num_requests": 1}, "image_gen": {"input_tokens": ...}}``, xAI
    ``{"web_search_calls": 1}``."""
    for tool, detail in usage_by_tool.items():
        row: Row = {"response_id": response_id, "source": source, "tool": tool}
        if type(detail) is dict:
            taken: dict[str, Any] = {}
            count = _take(detail, "count", _bigint, taken)
            if count is None:
                count = _take(detail, "num_requests", _bigint, taken)
            row["count"] = count
            row["input_tokens"] = _take(detail, "input_tokens", _bigint, taken)
            row["output_tokens"] = _take(detail, "output_tokens", _bigint, taken)
            row["total_tokens"] = _take(detail, "total_tokens", _bigint, taken)
            row["extra"] = _remainder(detail, taken) or None
        else:
            count = _bigint(detail)
            row.update(
                count=count,
                input_tokens=None,
                output_tokens=None,
                total_tokens=None,
                extra=None if count is not None or detail is None else _element_extra(detail),
            )
        rows.append(row)


# --- what no column maps: extra, and opaque payloads left in raw ---

OPAQUE_MIN_CHARS: Final = 1024
"""Strings at least this long that are ``data:`` URLs or base64 are opaque payloads."""

OPAQUE_KEY: Final = "$in_raw"
"""The key of the object that stands in for an opaque payload outside ``raw``."""

_BASE64: Final = re.compile(r"[A-Za-z0-9+/=_\-]*")


def is_opaque(value: str) -> bool:
    """Whether a string is a long opaque payload: a base64 image, encrypted reasoning, a ``data:`` URL.

    Such strings live only in ``raw``; :func:`opaque_stub` stands in for them elsewhere.
    """
    if len(value) < OPAQUE_MIN_CHARS:
        return False
    return value.startswith("data:") or _BASE64.fullmatch(value) is not None


def opaque_stub(value: str) -> dict[str, Any]:
    """``{"$in_raw": {"length": N, "sha256": hex}}``: the length in characters and the
    SHA-256 of the UTF-8 text of a payload that stays only in ``raw``."""
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
    return {OPAQUE_KEY: {"length": len(value), "sha256": digest}}


def without_opaque(value: Any) -> Any:
    """``value`` with every opaque string in it replaced by its stub (the same object
    when there is none, so the common case copies nothing)."""
    kind = type(value)
    if kind is str:
        return opaque_stub(value) if len(value) >= OPAQUE_MIN_CHARS and is_opaque(value) else value
    if kind is dict:
        changed: dict[str, Any] | None = None
        for key, item in value.items():
            new = without_opaque(item)
            if new is not item:
                if changed is None:
                    changed = dict(value)
                changed[key] = new
        return value if changed is None else changed
    if kind is list:
        changed_list: list[Any] | None = None
        for index, item in enumerate(value):
            new = without_opaque(item)
            if new is not item:
                if changed_list is None:
                    changed_list = list(value)
                changed_list[index] = new
        return value if changed_list is None else changed_list
    return value


Convert = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class Columns:
    """The typed columns one kind of JSON object fills.

    Attributes:
        fields: (column, key, converter) for each typed column a key of the object fills.
        mapped: the keys a column takes (so they stay out of ``extra``).
    """

    fields: tuple[tuple[str, str, Convert], ...]
    mapped: frozenset[str]


def _columns(*fields: tuple[str, str, Convert], also: Iterable[str] = ()) -> Columns:
    """:class:`Columns` of ``fields``; ``also``: keys a column of another kind takes."""
    return Columns(fields, frozenset(key for _, key, _ in fields) | frozenset(also))


def _fill(row: Row, element: dict[str, Any], columns: Columns, spread: Iterable[str] = ()) -> None:
    """Set ``row``'s typed columns from ``element`` and ``row["extra"]`` to the rest.

    ``spread`` are the keys whose value went into rows of
    another table. A value a column cannot take (another JSON type, an opaque payload)
    stays in ``extra``; ``extra`` is None when nothing is left.
    """
    get = element.get
    mapped = columns.mapped
    kept: list[str] | None = None
    for column, key, convert in columns.fields:
        value = get(key)
        if value is None:
            row[column] = None
            continue
        typed = convert(value)
        if typed is None or (type(typed) is str and len(typed) >= OPAQUE_MIN_CHARS and is_opaque(typed)):
            row[column] = None
            if kept is None:
                kept = []
            kept.append(key)
        else:
            row[column] = typed
    extra: Row | None = None
    for key, value in element.items():
        if key in mapped and (kept is None or key not in kept):
            continue
        if key in spread:
            continue
        if extra is None:
            extra = {}
        extra[key] = without_opaque(value)
    row["extra"] = extra


def _take(obj: dict[str, Any], key: str, convert: Convert, taken: dict[str, Any]) -> Any:
    """``convert(obj[key])``, recording in ``taken`` that the key's value is in a column."""
    value = obj.get(key)
    if value is None:
        if key in obj:
            taken[key] = True  # JSON null: the column's NULL says it
        return None
    typed = convert(value)
    if typed is not None:
        taken[key] = True
    return typed


def _remainder(obj: dict[str, Any], taken: dict[str, Any]) -> Row:
    """``obj`` without what ``taken`` says went to columns (``True``: the key; a dict: within
    the key's object). Objects left empty are left out."""
    rest: Row = {}
    for key, value in obj.items():
        spec = taken.get(key)
        if spec is True:
            continue
        if spec is not None and type(value) is dict:
            sub = _remainder(value, spec)
            if sub:
                rest[key] = sub
            continue
        rest[key] = without_opaque(value)
    return rest


def _element_extra(element: Any) -> Any:
    """``extra`` of an array element that is not an object: the value itself."""
    return without_opaque(element)


# --- output items ---

_ITEM: Final = _columns(
    ("id", "id", _text),
    ("type", "type", _text),
    ("role", "role", _text),
    ("status", "status", _text),
    ("phase", "phase", _text),
    ("name", "name", _text),
    ("namespace", "namespace", _text),
    ("call_id", "call_id", _text),
    ("arguments", "arguments", _json_text),
    ("server_label", "server_label", _text),
    ("approval_request_id", "approval_request_id", _text),
    ("code", "code", _text),
    ("container_id", "container_id", _text),
    ("goal", "goal", _text),
    ("input", "input", _json_text),
    ("output", "output", _json_text),
    ("error", "error", _json_text),
    ("execution", "execution", _text),
    ("created_by", "created_by", _text),
)


def _output_rows(response_id: str, output: list[Any], children: Rows) -> None:
    """Fill the item-level tables."""
    items = children["output_items"]
    for position, item in enumerate(output):
        row: Row = {"response_id": response_id, "position": position}
        if type(item) is not dict:
            for column, _, _ in _ITEM.fields:
                row[column] = None
            row["extra"] = _element_extra(item)
            items.append(row)
            continue
        item_type = _text(item.get("type"))
        spread: tuple[str, ...] = ()
        content = item.get("content")
        if type(content) is list:
            _content_rows(response_id, position, item_type, content, children)
            spread = ("content",)
        handler = _ITEM_HANDLERS.get(item_type) if item_type is not None else None
        if handler is not None:
            spread += handler(response_id, position, item, children)
        _fill(row, item, _ITEM, spread)
        if "output" in spread:  # its rows hold it: not the text too
            row["output"] = None
        items.append(row)


def output_text(children: Mapping[str, list[Row]]) -> str:
    """The SDKs' ``response.output_text`` from the rows: the ``text`` of every
    ``output_text`` part of every ``message`` item, in order (empty when there is none).

    Not stored (the parts hold the text); the ``response_summary`` view computes it the same way.
    """
    return "".join(
        row["text"]
        for row in children["content_parts"]
        if row["item_type"] == "message" and row["type"] == "output_text" and row["text"] is not None
    )


_PART: Final = _columns(
    ("type", "type", _text),
    ("text", "text", _text),
    ("refusal", "refusal", _text),
    also=("logprobs",),
)


def _content_rows(
    response_id: str,
    item_position: int,
    item_type: str | None,
    content: list[Any],
    children: Rows,
) -> None:
    """Parts of any item's ``content`` (``message``: output_text/refusal; ``reasoning``:
    reasoning_text) and the annotations of each part."""
    parts = children["content_parts"]
    for position, part in enumerate(content):
        row: Row = {
            "response_id": response_id,
            "item_position": item_position,
            "position": position,
            "item_type": item_type,
        }
        if type(part) is not dict:
            row.update(type=None, text=None, refusal=None, logprobs=None, extra=_element_extra(part))
            parts.append(row)
            continue
        annotations = part.get("annotations")
        spread = ("annotations",) if type(annotations) is list else ()
        _fill(row, part, _PART, spread)
        row["logprobs"] = without_opaque(part.get("logprobs"))
        parts.append(row)
        if type(annotations) is list:
            _annotation_rows(response_id, item_position, position, annotations, children)


_ANNOTATION: Final = _columns(
    ("type", "type", _text),
    ("url", "url", _text),
    ("title", "title", _text),
    ("start_index", "start_index", _int32),
    ("end_index", "end_index", _int32),
    ("file_id", "file_id", _text),
    ("filename", "filename", _text),
    ("container_id", "container_id", _text),
    ("file_index", "index", _int32),
)


def _annotation_rows(
    response_id: str,
    item_position: int,
    part_position: int,
    annotations: list[Any],
    children: Rows,
) -> None:
    rows = children["annotations"]
    for position, annotation in enumerate(annotations):
        row: Row = {
            "response_id": response_id,
            "item_position": item_position,
            "part_position": part_position,
            "position": position,
        }
        _element_row(row, annotation, _ANNOTATION)
        rows.append(row)


def _element_row(row: Row, element: Any, columns: Columns, spread: Iterable[str] = ()) -> Row:
    """Typed columns and ``extra`` of one array element (any JSON value)."""
    if type(element) is not dict:
        for column, _, _ in columns.fields:
            row[column] = None
        row["extra"] = _element_extra(element)
        return row
    _fill(row, element, columns, spread)
    return row


def _url_row(row: Row, element: Any, columns: Columns) -> Row:
    """An element given as a bare URL string or as an object with ``url``."""
    if type(element) is str and not is_opaque(element):
        for column, _, _ in columns.fields:
            row[column] = None
        row["url"] = element
        row["extra"] = None
        return row
    return _element_row(row, element, columns)


_SUMMARY: Final = _columns(("type", "type", _text), ("text", "text", _text))


def _reasoning(response_id: str, item_position: int, item: dict[str, Any], children: Rows) -> tuple[str, ...]:
    summary = item.get("summary")
    if type(summary) is not list:
        return ()
    rows = children["reasoning_summaries"]
    for position, part in enumerate(summary):
        row: Row = {"response_id": response_id, "item_position": item_position, "position": position}
        rows.append(_element_row(row, part, _SUMMARY))
    return ("summary",)


_ACTION: Final = _columns(
    ("type", "type", _text),
    ("query", "query", _text),
    ("url", "url", _text),
    ("pattern", "pattern", _text),
)
_SOURCE: Final = _columns(("type", "type", _text), ("url", "url", _text), ("title", "title", _text))


def _web_search_call(
    response_id: str, item_position: int, item: dict[str, Any], children: Rows
) -> tuple[str, ...]:
    action = item.get("action")
    spread: tuple[str, ...] = ()
    sources = None
    if type(action) is dict:
        sources = action.get("sources")
        row: Row = {"response_id": response_id, "item_position": item_position}
        in_action = ("sources",) if type(sources) is list else ()
        _element_row(row, action, _ACTION, ("queries", *in_action))
        row["queries"] = without_opaque(action.get("queries"))
        children["web_search_actions"].append(row)
        spread = ("action",)
    if type(sources) is not list:
        # Not in OpenAI's schema, but a provider may put the sources beside the action.
        sources = item.get("sources")
        if type(sources) is not list:
            return spread
        spread = (*spread, "sources")
    rows = children["web_search_sources"]
    for position, source in enumerate(sources):
        row = {"response_id": response_id, "item_position": item_position, "position": position}
        rows.append(_url_row(row, source, _SOURCE))
    return spread


_CODE_OUTPUT: Final = _columns(("type", "type", _text), ("logs", "logs", _text), ("url", "url", _text))


def _code_interpreter_call(
    response_id: str, item_position: int, item: dict[str, Any], children: Rows
) -> tuple[str, ...]:
    outputs = item.get("outputs")
    if type(outputs) is not list:
        return ()
    rows = children["code_interpreter_outputs"]
    for position, output in enumerate(outputs):
        row: Row = {"response_id": response_id, "item_position": item_position, "position": position}
        rows.append(_element_row(row, output, _CODE_OUTPUT))
    return ("outputs",)


_URL: Final = _columns(
    ("url", "url", _text),
)


def _web_extractor_call(
    response_id: str, item_position: int, item: dict[str, Any], children: Rows
) -> tuple[str, ...]:
    urls = item.get("urls")
    if type(urls) is not list:
        return ()
    rows = children["web_extractor_urls"]
    for position, url in enumerate(urls):
        row: Row = {"response_id": response_id, "item_position": item_position, "position": position}
        rows.append(_url_row(row, url, _URL))
    return ("urls",)


_IMAGE_RESULT: Final = _columns(
    ("title", "title", _text),
    ("url", "url", _text),
    ("result_index", "index", _int32),
)


def _image_search_call(
    response_id: str, item_position: int, item: dict[str, Any], children: Rows
) -> tuple[str, ...]:
    """``web_search_image_call`` and ``image_search_call``: ``output`` is a JSON string
    holding an array of ``{"title", "url", "index"}``; when it is one, its rows hold it."""
    results = item.get("output")
    if type(results) is str:
        try:
            parsed = loads(results)
        except (ValueError, RecursionError):
            return ()  # not JSON: the text stays in output_items.output
        # The body's scrub saw this escape as text; parsed, it is a lone surrogate.
        results = scrub_surrogates(parsed) if "\\ud" in results or "\\uD" in results else parsed
    if type(results) is not list:
        return ()
    rows = children["image_search_results"]
    for position, result in enumerate(results):
        row: Row = {"response_id": response_id, "item_position": item_position, "position": position}
        rows.append(_element_row(row, result, _IMAGE_RESULT))
    return ("output",)


_MCP_TOOL: Final = _columns(("name", "name", _text), ("description", "description", _text))


def _mcp_list_tools(
    response_id: str, item_position: int, item: dict[str, Any], children: Rows
) -> tuple[str, ...]:
    tools = item.get("tools")
    if type(tools) is not list:
        return ()
    server_label = _text(item.get("server_label"))
    rows = children["mcp_tools"]
    for position, tool in enumerate(tools):
        row: Row = {"response_id": response_id, "item_position": item_position, "position": position}
        _element_row(row, tool, _MCP_TOOL)
        row["server_label"] = server_label
        rows.append(row)
    return ("tools",)


_FILE_RESULT: Final = _columns(
    ("file_id", "file_id", _text),
    ("filename", "filename", _text),
    ("score", "score", _float),
    ("text", "text", _text),
)


def _file_search_call(
    response_id: str, item_position: int, item: dict[str, Any], children: Rows
) -> tuple[str, ...]:
    spread: list[str] = []
    queries = item.get("queries")
    if type(queries) is list:
        query_rows = children["file_search_queries"]
        for position, query in enumerate(queries):
            text = _text(query)
            keep = text is None or is_opaque(text)
            query_rows.append(
                {
                    "response_id": response_id,
                    "item_position": item_position,
                    "position": position,
                    "query": None if keep else text,
                    "extra": _element_extra(query) if keep else None,
                }
            )
        spread.append("queries")
    results = item.get("results")
    if type(results) is list:
        result_rows = children["file_search_results"]
        for position, result in enumerate(results):
            row: Row = {"response_id": response_id, "item_position": item_position, "position": position}
            _element_row(row, result, _FILE_RESULT, ("attributes",))
            row["attributes"] = without_opaque(result.get("attributes")) if type(result) is dict else None
            result_rows.append(row)
        spread.append("results")
    return tuple(spread)


_ITEM_HANDLERS: Final[dict[str, Callable[[str, int, dict[str, Any], Rows], tuple[str, ...]]]] = {
    "reasoning": _reasoning,
    "web_search_call": _web_search_call,
    "code_interpreter_call": _code_interpreter_call,
    "web_extractor_call": _web_extractor_call,
    "web_search_image_call": _image_search_call,
    "image_search_call": _image_search_call,
    "mcp_list_tools": _mcp_list_tools,
    "file_search_call": _file_search_call,
}
"""Item type -> the function that fills the tables specific to that type; it returns the
keys of the item whose values its rows hold (left out of the item's ``extra``)."""


# --- input items (content-addressed) ---


def item_digest(item: Any) -> str:
    """SHA-256 (hex) of an input item's canonical JSON: keys sorted, no whitespace."""
    return hashlib.sha256(json_bytes(item, sort_keys=True)).hexdigest()


def normalize_input_items(response_id: str, items: list[Any]) -> list[Row]:
    """Rows for a response's input items from ``GET /responses/{id}/input_items``.

    Args:
        response_id: the response the items belong to.
        items: every item, oldest first (all pages joined).

    Returns:
        One row per item, in order: ``response_id``, ``position``, ``item_sha256`` (see
        :func:`item_digest`) and ``item`` (the item as received). The store keeps each
        distinct item once, in ``input_item_contents``, and the order in
        ``response_input_items``; the ``input_items`` view joins them.
    """
    return [
        {"response_id": response_id, "position": position, "item_sha256": item_digest(item), "item": item}
        for position, item in enumerate(items)
    ]


MILLISECONDS_FROM = 100_000_000_000
"""An epoch number at least this large is in milliseconds: as seconds it would be the
year 5138, as milliseconds it is March 1973. DashScope's input-item lists give
``created_at`` in milliseconds while its Response objects give seconds."""


def epoch_any_unit(value: Any) -> datetime | None:
    """Unix seconds or milliseconds (told apart by size) as an aware UTC datetime."""
    kind = type(value)
    if (kind is int or kind is float) and abs(value) >= MILLISECONDS_FROM:
        return _timestamp(value / 1000)
    return _timestamp(value)


def normalize_input_list(response_id: str, envelope: dict[str, Any]) -> Row | None:
    """The row for ``input_item_lists`` from an input-item list's own fields, if it has any.

    Args:
        response_id: the response the list belongs to.
        envelope: the list's fields besides ``object``, ``data``, ``first_id``,
            ``last_id`` and ``has_more`` (DashScope: ``id``, ``model``, ``created_at`` in
            milliseconds, ``previous_response_id``); OpenAI's lists have none.

    ``created_at`` becomes a time whichever unit it is in; ``id`` is left out when it is
    the response's own ID; every other field the columns do not take goes to ``extra``.
    """
    if not envelope:
        return None
    rest = dict(envelope)
    if rest.get("id") == response_id:
        del rest["id"]
    created = rest.pop("created_at", None)
    created_at = epoch_any_unit(created)
    if created is not None and created_at is None:
        rest["created_at"] = created  # not a number: kept as it came
    model = rest.pop("model", None)
    if model is not None and type(model) is not str:
        rest["model"], model = model, None
    previous = rest.pop("previous_response_id", None)
    if previous is not None and type(previous) is not str:
        rest["previous_response_id"], previous = previous, None
    return {
        "response_id": response_id,
        "created_at": created_at,
        "model": model,
        "previous_response_id": previous,
        "extra": rest or None,
    }


def map_strings(value: Any, fix: Callable[[str], str]) -> Any:
    """A parsed JSON value with ``fix`` applied to every string in it, keys included.

    Walked with a stack of its own, not Python's: a body may nest 512 levels
    (``jsontext.MAX_NESTING``), and a recursion of two frames a level (a function and its
    comprehension) ran out of stack there (the lone surrogate and secret scrubs)."""
    todo: list[tuple[Any, Any]] = []
    root = _mapped_or_queued(value, fix, todo)
    while todo:
        source, target = todo.pop()
        if type(target) is dict:
            for key, item in source.items():
                target[fix(key) if isinstance(key, str) else key] = _mapped_or_queued(item, fix, todo)
        else:
            target.extend(_mapped_or_queued(item, fix, todo) for item in source)
    return root


def _mapped_or_queued(value: Any, fix: Callable[[str], str], todo: list[tuple[Any, Any]]) -> Any:
    """``value`` fixed when a string; for a dict or list, an empty one that ``todo`` fills."""
    if isinstance(value, str):
        return fix(value)
    if isinstance(value, dict | list):
        target: dict[Any, Any] | list[Any] = {} if isinstance(value, dict) else []
        todo.append((value, target))
        return target
    return value


def normalize_body(raw: bytes, body: Any = None) -> NormalizedResponse:
    """Normalize an archived body (parsing it unless ``body`` is given); raises on a poison body.

    Lone UTF-16 surrogates (a token boundary inside an emoji) cannot be stored as text:
    the derived columns get U+FFFD for them, while ``raw`` keeps the exact bytes.
    """
    if body is None:
        body = loads(raw)
    if not isinstance(body, dict):
        raise NormalizationError("body is not a JSON object")
    if b"\\ud" in raw or b"\\uD" in raw:
        body = scrub_surrogates(body)
    return normalize(body)


def _fix_str(value: str) -> str:
    return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def scrub_surrogates(value: Any) -> Any:
    """Replace lone surrogates in every string of a parsed JSON value with U+FFFD."""
    return map_strings(value, _fix_str)
