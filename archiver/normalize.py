"""Turn a parsed Response body into rows for the archive tables.

``normalize(body)`` is pure: no I/O, no clock, no database. It returns one row for
``responses`` (every column except the ones the store fills: ``raw``, ``raw_sha256``,
``fetched_at``, ``archived_at``) and a list of rows for every table in
``schema.CHILD_TABLES``. Every row has exactly its table's column keys, so the writer can
hand each list to one executemany INSERT.

Nothing in the body is dropped. Typed columns take a value only when it has the expected
JSON type; otherwise the column is None and the value stays in a JSON column: the whole
element (``item``, ``part``, ``annotation``, ...) for child rows, ``extra`` for top-level
scalars. Top-level keys without a column of their own (unknown, provider-specific, future)
go to ``extra``; ``output`` is spread over ``output_items``.

The rows reference the parsed values; nothing is copied, so do not mutate the body while
the rows are in use.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from archiver.errors import NormalizationError
from archiver.schema import CHILD_TABLES, STORE_COLUMNS, responses

__all__ = ["NormalizedResponse", "normalize"]

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
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        # orjson refuses integers beyond 64 bits; the standard library does not.
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


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
        "tools",
        "reasoning",
        "text",
        "usage",
        "prompt",
        "prompt_cache_options",
        "conversation",
        "moderation",
        "billing",
        "tool_usage",
        "content_filters",
    }
)
"""Top-level keys stored as given in a JSON column of the same name."""

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
    for key, value in body.items():
        convert = _RESPONSE_SCALARS.get(key)
        if convert is not None:
            if value is not None:
                typed = convert(value)
                if typed is None:
                    extra[key] = value  # odd type: keep it where a reader can find it
                row[key] = typed
        elif key in _RESPONSE_JSON:
            row[key] = value
        elif key == "output" and type(value) is list:
            output = value
        elif key != "id":
            # Includes a top-level "output_text" (an SDK serialization artefact): the
            # column of that name is computed from the output, so the body's own value
            # is kept here.
            extra[key] = value
    row["id"] = response_id
    row["extra"] = extra or None

    _lift_scalars(row)
    children: Rows = {name: [] for name in _CHILD_TABLE_NAMES}
    if output is not None:
        row["output_text"] = _output_rows(response_id, output, children)
    usage = row["usage"]
    if type(usage) is dict:
        _usage_rows(response_id, usage, row, children)
    tool_usage = row["tool_usage"]
    if type(tool_usage) is dict:
        _tool_usage_rows(response_id, "tool_usage", tool_usage, children["tool_usage"])
    return NormalizedResponse(response=row, children=children)


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


def _usage_rows(response_id: str, usage: dict[str, Any], row: Row, children: Rows) -> None:
    row["input_tokens"] = _bigint(usage.get("input_tokens"))
    row["output_tokens"] = _bigint(usage.get("output_tokens"))
    row["total_tokens"] = _bigint(usage.get("total_tokens"))
    input_details = _dict_at(usage, "input_tokens_details", "prompt_tokens_details")
    if input_details is not None:
        row["cached_tokens"] = _bigint(input_details.get("cached_tokens"))
        row["cache_write_tokens"] = _bigint(input_details.get("cache_write_tokens"))
    output_details = _dict_at(usage, "output_tokens_details", "completion_tokens_details")
    if output_details is not None:
        row["reasoning_tokens"] = _bigint(output_details.get("reasoning_tokens"))

    x_details = usage.get("x_details")
    if type(x_details) is list:
        billing = children["billing_details"]
        for position, detail in enumerate(x_details):
            if type(detail) is not dict:
                billing.append(
                    {
                        "response_id": response_id,
                        "position": position,
                        "x_billing_type": None,
                        "input_tokens": None,
                        "output_tokens": None,
                        "total_tokens": None,
                        "cached_tokens": None,
                        "reasoning_tokens": None,
                        "detail": detail,
                    }
                )
                continue
            cached = _dict_at(detail, "prompt_tokens_details", "input_tokens_details") or {}
            reasoning = _dict_at(detail, "output_tokens_details", "completion_tokens_details") or {}
            billing.append(
                {
                    "response_id": response_id,
                    "position": position,
                    "x_billing_type": _text(detail.get("x_billing_type")),
                    "input_tokens": _bigint(detail.get("input_tokens")),
                    "output_tokens": _bigint(detail.get("output_tokens")),
                    "total_tokens": _bigint(detail.get("total_tokens")),
                    "cached_tokens": _bigint(cached.get("cached_tokens")),
                    "reasoning_tokens": _bigint(reasoning.get("reasoning_tokens")),
                    "detail": detail,
                }
            )

    tool_rows = children["tool_usage"]
    x_tools = usage.get("x_tools")
    if type(x_tools) is dict:
        _tool_usage_rows(response_id, "usage.x_tools", x_tools, tool_rows)
    server_side = usage.get("server_side_tool_usage_details")
    if type(server_side) is dict:
        source = "usage.server_side_tool_usage_details"
        _tool_usage_rows(response_id, source, server_side, tool_rows)


def _tool_usage_rows(response_id: str, source: str, usage_by_tool: dict[str, Any], rows: list[Row]) -> None:
    """One row per tool: DashScope ``{"web_search": {"count": 1}}``, OpenAI
    ``{"web_search": {"num_requests": 1}, "image_gen": {"input_tokens": ...}}``, xAI
    ``{"web_search_calls": 1}``."""
    for tool, detail in usage_by_tool.items():
        if type(detail) is dict:
            count = _bigint(detail.get("count"))
            if count is None:
                count = _bigint(detail.get("num_requests"))
            input_tokens = _bigint(detail.get("input_tokens"))
            output_tokens = _bigint(detail.get("output_tokens"))
            total_tokens = _bigint(detail.get("total_tokens"))
        else:
            count = _bigint(detail)
            input_tokens = output_tokens = total_tokens = None
        rows.append(
            {
                "response_id": response_id,
                "source": source,
                "tool": tool,
                "count": count,
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
                "total_tokens": total_tokens,
                "detail": detail,
            }
        )


# --- output items ---


def _output_rows(response_id: str, output: list[Any], children: Rows) -> str:
    """Fill the item-level tables; return the SDK's ``output_text``.

    ``output_text`` is the concatenation of the ``text`` of every ``output_text`` part of
    every ``message`` item, in order (empty when there is none), as in the OpenAI SDKs.
    """
    items = children["output_items"]
    texts: list[str] = []
    for position, item in enumerate(output):
        if type(item) is not dict:
            items.append(_bare_item_row(response_id, position, item))
            continue
        get = item.get
        item_type = _text(get("type"))
        items.append(
            {
                "response_id": response_id,
                "position": position,
                "id": _text(get("id")),
                "type": item_type,
                "role": _text(get("role")),
                "status": _text(get("status")),
                "phase": _text(get("phase")),
                "name": _text(get("name")),
                "namespace": _text(get("namespace")),
                "call_id": _text(get("call_id")),
                "arguments": _json_text(get("arguments")),
                "server_label": _text(get("server_label")),
                "approval_request_id": _text(get("approval_request_id")),
                "code": _text(get("code")),
                "container_id": _text(get("container_id")),
                "goal": _text(get("goal")),
                "input": _json_text(get("input")),
                "output": _json_text(get("output")),
                "error": _json_text(get("error")),
                "execution": _text(get("execution")),
                "created_by": _text(get("created_by")),
                "item": item,
            }
        )
        content = get("content")
        if type(content) is list:
            _content_rows(response_id, position, item_type, content, children, texts)
        handler = _ITEM_HANDLERS.get(item_type) if item_type is not None else None
        if handler is not None:
            handler(response_id, position, item, children)
    return "".join(texts)


def _bare_item_row(response_id: str, position: int, item: Any) -> Row:
    """An ``output`` element that is not an object: kept whole, nothing typed."""
    return {
        "response_id": response_id,
        "position": position,
        "id": None,
        "type": None,
        "role": None,
        "status": None,
        "phase": None,
        "name": None,
        "namespace": None,
        "call_id": None,
        "arguments": None,
        "server_label": None,
        "approval_request_id": None,
        "code": None,
        "container_id": None,
        "goal": None,
        "input": None,
        "output": None,
        "error": None,
        "execution": None,
        "created_by": None,
        "item": item,
    }


def _content_rows(
    response_id: str,
    item_position: int,
    item_type: str | None,
    content: list[Any],
    children: Rows,
    texts: list[str],
) -> None:
    """Parts of any item's ``content`` (``message``: output_text/refusal; ``reasoning``:
    reasoning_text) and the annotations of each part."""
    parts = children["content_parts"]
    collect_text = item_type == "message"
    for position, part in enumerate(content):
        if type(part) is not dict:
            parts.append(
                {
                    "response_id": response_id,
                    "item_position": item_position,
                    "position": position,
                    "item_type": item_type,
                    "type": None,
                    "text": None,
                    "refusal": None,
                    "annotations": None,
                    "logprobs": None,
                    "part": part,
                }
            )
            continue
        part_type = _text(part.get("type"))
        text = _text(part.get("text"))
        annotations = part.get("annotations")
        parts.append(
            {
                "response_id": response_id,
                "item_position": item_position,
                "position": position,
                "item_type": item_type,
                "type": part_type,
                "text": text,
                "refusal": _text(part.get("refusal")),
                "annotations": annotations,
                "logprobs": part.get("logprobs"),
                "part": part,
            }
        )
        if collect_text and text is not None and part_type == "output_text":
            texts.append(text)
        if type(annotations) is list:
            _annotation_rows(response_id, item_position, position, annotations, children)


def _annotation_rows(
    response_id: str,
    item_position: int,
    part_position: int,
    annotations: list[Any],
    children: Rows,
) -> None:
    rows = children["annotations"]
    for position, annotation in enumerate(annotations):
        get = annotation.get if type(annotation) is dict else _absent
        rows.append(
            {
                "response_id": response_id,
                "item_position": item_position,
                "part_position": part_position,
                "position": position,
                "type": _text(get("type")),
                "url": _text(get("url")),
                "title": _text(get("title")),
                "start_index": _int32(get("start_index")),
                "end_index": _int32(get("end_index")),
                "file_id": _text(get("file_id")),
                "filename": _text(get("filename")),
                "container_id": _text(get("container_id")),
                "file_index": _int32(get("index")),
                "annotation": annotation,
            }
        )


def _absent(key: str) -> None:
    """``dict.get`` stand-in for elements that are not objects."""
    return None


def _url_of(element: Any) -> str | None:
    """A URL given as a bare string or as an object's ``url``."""
    if type(element) is str:
        return element
    if type(element) is dict:
        return _text(element.get("url"))
    return None


def _reasoning(response_id: str, item_position: int, item: dict[str, Any], children: Rows) -> None:
    summary = item.get("summary")
    if type(summary) is not list:
        return
    rows = children["reasoning_summaries"]
    for position, part in enumerate(summary):
        get = part.get if type(part) is dict else _absent
        rows.append(
            {
                "response_id": response_id,
                "item_position": item_position,
                "position": position,
                "type": _text(get("type")),
                "text": _text(get("text")),
                "summary": part,
            }
        )


def _web_search_call(response_id: str, item_position: int, item: dict[str, Any], children: Rows) -> None:
    action = item.get("action")
    sources = None
    if type(action) is dict:
        get = action.get
        children["web_search_actions"].append(
            {
                "response_id": response_id,
                "item_position": item_position,
                "type": _text(get("type")),
                "query": _text(get("query")),
                "queries": get("queries"),
                "url": _text(get("url")),
                "pattern": _text(get("pattern")),
                "action": action,
            }
        )
        sources = get("sources")
    if type(sources) is not list:
        # Not in OpenAI's schema, but a provider may put the sources beside the action.
        sources = item.get("sources")
        if type(sources) is not list:
            return
    rows = children["web_search_sources"]
    for position, source in enumerate(sources):
        source_get = source.get if type(source) is dict else _absent
        rows.append(
            {
                "response_id": response_id,
                "item_position": item_position,
                "position": position,
                "type": _text(source_get("type")),
                "url": _url_of(source),
                "title": _text(source_get("title")),
                "source": source,
            }
        )


def _code_interpreter_call(
    response_id: str, item_position: int, item: dict[str, Any], children: Rows
) -> None:
    outputs = item.get("outputs")
    if type(outputs) is not list:
        return
    rows = children["code_interpreter_outputs"]
    for position, output in enumerate(outputs):
        get = output.get if type(output) is dict else _absent
        rows.append(
            {
                "response_id": response_id,
                "item_position": item_position,
                "position": position,
                "type": _text(get("type")),
                "logs": _text(get("logs")),
                "url": _text(get("url")),
                "output": output,
            }
        )


def _web_extractor_call(response_id: str, item_position: int, item: dict[str, Any], children: Rows) -> None:
    urls = item.get("urls")
    if type(urls) is not list:
        return
    rows = children["web_extractor_urls"]
    for position, url in enumerate(urls):
        rows.append(
            {
                "response_id": response_id,
                "item_position": item_position,
                "position": position,
                "url": _url_of(url),
                "value": url,
            }
        )


def _image_search_call(response_id: str, item_position: int, item: dict[str, Any], children: Rows) -> None:
    """``web_search_image_call`` and ``image_search_call``: ``output`` is a JSON string
    holding an array of ``{"title", "url", "index"}``."""
    results = item.get("output")
    if type(results) is str:
        try:
            results = orjson.loads(results)
        except orjson.JSONDecodeError:
            return  # not JSON: the text stays in output_items.output
    if type(results) is not list:
        return
    rows = children["image_search_results"]
    for position, result in enumerate(results):
        get = result.get if type(result) is dict else _absent
        rows.append(
            {
                "response_id": response_id,
                "item_position": item_position,
                "position": position,
                "title": _text(get("title")),
                "url": _text(get("url")),
                "result_index": _int32(get("index")),
                "result": result,
            }
        )


def _mcp_list_tools(response_id: str, item_position: int, item: dict[str, Any], children: Rows) -> None:
    tools = item.get("tools")
    if type(tools) is not list:
        return
    server_label = _text(item.get("server_label"))
    rows = children["mcp_tools"]
    for position, tool in enumerate(tools):
        get = tool.get if type(tool) is dict else _absent
        rows.append(
            {
                "response_id": response_id,
                "item_position": item_position,
                "position": position,
                "server_label": server_label,
                "name": _text(get("name")),
                "description": _text(get("description")),
                "tool": tool,
            }
        )


def _file_search_call(response_id: str, item_position: int, item: dict[str, Any], children: Rows) -> None:
    queries = item.get("queries")
    if type(queries) is list:
        query_rows = children["file_search_queries"]
        for position, query in enumerate(queries):
            query_rows.append(
                {
                    "response_id": response_id,
                    "item_position": item_position,
                    "position": position,
                    "query": _text(query),
                    "value": query,
                }
            )
    results = item.get("results")
    if type(results) is list:
        result_rows = children["file_search_results"]
        for position, result in enumerate(results):
            get = result.get if type(result) is dict else _absent
            result_rows.append(
                {
                    "response_id": response_id,
                    "item_position": item_position,
                    "position": position,
                    "file_id": _text(get("file_id")),
                    "filename": _text(get("filename")),
                    "score": _float(get("score")),
                    "text": _text(get("text")),
                    "attributes": get("attributes"),
                    "result": result,
                }
            )


_ITEM_HANDLERS: Final[dict[str, Callable[[str, int, dict[str, Any], Rows], None]]] = {
    "reasoning": _reasoning,
    "web_search_call": _web_search_call,
    "code_interpreter_call": _code_interpreter_call,
    "web_extractor_call": _web_extractor_call,
    "web_search_image_call": _image_search_call,
    "image_search_call": _image_search_call,
    "mcp_list_tools": _mcp_list_tools,
    "file_search_call": _file_search_call,
}
"""Item type -> the function that fills the tables specific to that type."""


def normalize_input_items(response_id: str, items: list[Any]) -> list[Row]:
    """Rows for ``input_items`` from the items of ``GET /responses/{id}/input_items``.

    Args:
        response_id: the response the items belong to.
        items: every item, oldest first (all pages joined).

    ``text`` joins the text of the item's content parts (``input_text``, ``output_text``,
    ``text``), or is the content itself when it is a plain string.
    """
    rows: list[Row] = []
    for position, item in enumerate(items):
        get = item.get if type(item) is dict else _absent
        content = get("content")
        if type(content) is str:
            text: str | None = content
        elif type(content) is list:
            texts = [part["text"] for part in content if type(part) is dict and type(part.get("text")) is str]
            text = "\n".join(texts) if texts else None
        else:
            text = None
        rows.append(
            {
                "response_id": response_id,
                "position": position,
                "id": _text(get("id")),
                "type": _text(get("type")),
                "role": _text(get("role")),
                "status": _text(get("status")),
                "call_id": _text(get("call_id")),
                "text": text,
                "item": item,
            }
        )
    return rows


def map_strings(value: Any, fix: Callable[[str], str]) -> Any:
    """A parsed JSON value with ``fix`` applied to every string in it, keys included."""
    if isinstance(value, str):
        return fix(value)
    if isinstance(value, dict):
        return {(fix(k) if isinstance(k, str) else k): map_strings(v, fix) for k, v in value.items()}
    if isinstance(value, list):
        return [map_strings(v, fix) for v in value]
    return value


def normalize_body(raw: bytes, body: Any = None) -> NormalizedResponse:
    """Normalize an archived body (parsing it unless ``body`` is given); raises on a poison body.

    Lone UTF-16 surrogates (a token boundary inside an emoji) cannot be stored as text:
    the derived columns get U+FFFD for them, while ``raw`` keeps the exact bytes.
    """
    if body is None:
        body = orjson.loads(raw)
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
