"""The tables specific to one type of output item (reasoning summaries, web search
actions and sources, code interpreter outputs, MCP tools, file search results, ...).

:data:`ITEM_HANDLERS` maps an item's ``type`` to the function that fills them. Each
function returns the keys of the item whose values its rows hold, which the item's own
row then leaves out of its ``extra``. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from archiver.json_strings import scrub_surrogates
from archiver.jsontext import loads
from archiver.opaque import is_opaque, without_opaque
from archiver.typed_columns import (
    Columns,
    Row,
    Rows,
    as_float,
    as_int32,
    as_text,
    element_extra,
    element_row,
    url_row,
)

_SUMMARY: Final = Columns.of(("type", "type", as_text), ("text", "text", as_text))


def _reasoning(response_id: str, item_position: int, item: dict[str, Any], children: Rows) -> tuple[str, ...]:
    summary = item.get("summary")
    if type(summary) is not list:
        return ()
    rows = children["reasoning_summaries"]
    for position, part in enumerate(summary):
        row: Row = {"response_id": response_id, "item_position": item_position, "position": position}
        rows.append(element_row(row, part, _SUMMARY))
    return ("summary",)


_ACTION: Final = Columns.of(
    ("type", "type", as_text),
    ("query", "query", as_text),
    ("url", "url", as_text),
    ("pattern", "pattern", as_text),
)
_SOURCE: Final = Columns.of(("type", "type", as_text), ("url", "url", as_text), ("title", "title", as_text))


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
        element_row(row, action, _ACTION, ("queries", *in_action))
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
        rows.append(url_row(row, source, _SOURCE))
    return spread


_CODE_OUTPUT: Final = Columns.of(
    ("type", "type", as_text), ("logs", "logs", as_text), ("url", "url", as_text)
)


def _code_interpreter_call(
    response_id: str, item_position: int, item: dict[str, Any], children: Rows
) -> tuple[str, ...]:
    outputs = item.get("outputs")
    if type(outputs) is not list:
        return ()
    rows = children["code_interpreter_outputs"]
    for position, output in enumerate(outputs):
        row: Row = {"response_id": response_id, "item_position": item_position, "position": position}
        rows.append(element_row(row, output, _CODE_OUTPUT))
    return ("outputs",)


_URL: Final = Columns.of(
    ("url", "url", as_text),
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
        rows.append(url_row(row, url, _URL))
    return ("urls",)


_IMAGE_RESULT: Final = Columns.of(
    ("title", "title", as_text),
    ("url", "url", as_text),
    ("result_index", "index", as_int32),
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
        rows.append(element_row(row, result, _IMAGE_RESULT))
    return ("output",)


_MCP_TOOL: Final = Columns.of(("name", "name", as_text), ("description", "description", as_text))


def _mcp_list_tools(
    response_id: str, item_position: int, item: dict[str, Any], children: Rows
) -> tuple[str, ...]:
    tools = item.get("tools")
    if type(tools) is not list:
        return ()
    server_label = as_text(item.get("server_label"))
    rows = children["mcp_tools"]
    for position, tool in enumerate(tools):
        row: Row = {"response_id": response_id, "item_position": item_position, "position": position}
        element_row(row, tool, _MCP_TOOL)
        row["server_label"] = server_label
        rows.append(row)
    return ("tools",)


_FILE_RESULT: Final = Columns.of(
    ("file_id", "file_id", as_text),
    ("filename", "filename", as_text),
    ("score", "score", as_float),
    ("text", "text", as_text),
)


def _file_search_call(
    response_id: str, item_position: int, item: dict[str, Any], children: Rows
) -> tuple[str, ...]:
    spread: list[str] = []
    queries = item.get("queries")
    if type(queries) is list:
        query_rows = children["file_search_queries"]
        for position, query in enumerate(queries):
            text = as_text(query)
            keep = text is None or is_opaque(text)
            query_rows.append(
                {
                    "response_id": response_id,
                    "item_position": item_position,
                    "position": position,
                    "query": None if keep else text,
                    "extra": element_extra(query) if keep else None,
                }
            )
        spread.append("queries")
    results = item.get("results")
    if type(results) is list:
        result_rows = children["file_search_results"]
        for position, result in enumerate(results):
            row: Row = {"response_id": response_id, "item_position": item_position, "position": position}
            element_row(row, result, _FILE_RESULT, ("attributes",))
            row["attributes"] = without_opaque(result.get("attributes")) if type(result) is dict else None
            result_rows.append(row)
        spread.append("results")
    return tuple(spread)


ITEM_HANDLERS: Final[dict[str, Callable[[str, int, dict[str, Any], Rows], tuple[str, ...]]]] = {
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
