"""The rows of a response's ``usage``: token columns, billing details and tool counts.

``usage``'s token counts go to columns of the ``responses`` row (OpenAI's and Chat
Completions' names for the details alike); DashScope's ``usage.x_details`` become
``billing_details`` rows, and the per-tool counts (``usage.x_tools``, xAI's
``usage.server_side_tool_usage_details``, DashScope's top-level ``tool_usage``) become
``tool_usage`` rows. What none of them takes goes back to the caller, for ``extra``.
Pure: no I/O.
"""

from __future__ import annotations

from typing import Any

from archiver.typed_columns import Row, Rows, as_bigint, as_text, element_extra, remainder, take


def usage_rows(response_id: str, usage: dict[str, Any], row: Row, children: Rows) -> Row:
    """Token columns of ``responses``, billing and tool rows; returns what none of them took."""
    taken: dict[str, Any] = {}
    row["input_tokens"] = take(usage, "input_tokens", as_bigint, taken)
    row["output_tokens"] = take(usage, "output_tokens", as_bigint, taken)
    row["total_tokens"] = take(usage, "total_tokens", as_bigint, taken)
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
        tool_usage_rows(response_id, "usage.x_tools", x_tools, tool_rows)
    server_side = usage.get("server_side_tool_usage_details")
    if type(server_side) is dict:
        taken["server_side_tool_usage_details"] = True
        source = "usage.server_side_tool_usage_details"
        tool_usage_rows(response_id, source, server_side, tool_rows)
    return remainder(usage, taken)


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
                row[column] = take(details, column, as_bigint, kept)
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
            extra=element_extra(detail),
        )
        return row
    taken: dict[str, Any] = {}
    row["x_billing_type"] = take(detail, "x_billing_type", as_text, taken)
    row["input_tokens"] = take(detail, "input_tokens", as_bigint, taken)
    row["output_tokens"] = take(detail, "output_tokens", as_bigint, taken)
    row["total_tokens"] = take(detail, "total_tokens", as_bigint, taken)
    row["cached_tokens"] = row["reasoning_tokens"] = None
    _take_token_details(
        detail, ("prompt_tokens_details", "input_tokens_details"), ("cached_tokens",), row, taken
    )
    _take_token_details(detail, _OUTPUT_DETAILS, ("reasoning_tokens",), row, taken)
    row["extra"] = remainder(detail, taken) or None
    return row


def tool_usage_rows(response_id: str, source: str, usage_by_tool: dict[str, Any], rows: list[Row]) -> None:
    """One row per tool: DashScope ``{"web_search": {"count": 1}}``, OpenAI
    ``{"web_search": {"num_requests": 1}, "image_gen": {"input_tokens": ...}}``, xAI
    ``{"web_search_calls": 1}``."""
    for tool, detail in usage_by_tool.items():
        row: Row = {"response_id": response_id, "source": source, "tool": tool}
        if type(detail) is dict:
            taken: dict[str, Any] = {}
            count = take(detail, "count", as_bigint, taken)
            if count is None:
                count = take(detail, "num_requests", as_bigint, taken)
            row["count"] = count
            row["input_tokens"] = take(detail, "input_tokens", as_bigint, taken)
            row["output_tokens"] = take(detail, "output_tokens", as_bigint, taken)
            row["total_tokens"] = take(detail, "total_tokens", as_bigint, taken)
            row["extra"] = remainder(detail, taken) or None
        else:
            count = as_bigint(detail)
            row.update(
                count=count,
                input_tokens=None,
                output_tokens=None,
                total_tokens=None,
                extra=None if count is not None or detail is None else element_extra(detail),
            )
        rows.append(row)
