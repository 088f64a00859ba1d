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

This module makes the ``responses`` row and calls the others for the rest:
:mod:`archiver.output_items` (items, content parts, annotations) and
:mod:`archiver.item_types` (the tables of one item type), :mod:`archiver.usage_rows`
(token columns, billing and tool rows), :mod:`archiver.typed_columns` (typed columns and
``extra``), :mod:`archiver.opaque` (payloads left in ``raw``),
:mod:`archiver.input_item_rows` (input items) and :mod:`archiver.json_strings` (the
lone-surrogate scrub).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from archiver.errors import NormalizationError
from archiver.input_item_rows import epoch_any_unit as epoch_any_unit
from archiver.input_item_rows import item_digest as item_digest
from archiver.input_item_rows import normalize_input_items
from archiver.input_item_rows import normalize_input_list as normalize_input_list
from archiver.json_strings import map_strings as map_strings
from archiver.json_strings import scrub_surrogates as scrub_surrogates
from archiver.jsontext import loads
from archiver.opaque import OPAQUE_KEY as OPAQUE_KEY
from archiver.opaque import is_opaque
from archiver.opaque import without_opaque as without_opaque
from archiver.output_items import output_rows, output_text
from archiver.row_budget import RowBudget, max_rows
from archiver.schema import CHILD_TABLES, STORE_COLUMNS, responses
from archiver.typed_columns import (
    Row,
    Rows,
    as_bigint,
    as_bool,
    as_float,
    as_int32,
    as_text,
    as_timestamp,
)
from archiver.usage_rows import tool_usage_rows, usage_rows

__all__ = ["NormalizedResponse", "is_opaque", "normalize", "normalize_input_items", "output_text"]
# The names imported above ``as`` themselves are re-exported: they were defined here
# before the split, and other modules and the tests import them from here.


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


# --- responses ---

_RESPONSE_SCALARS: Final[dict[str, Callable[[Any], Any]]] = {
    "object": as_text,
    "status": as_text,
    "model": as_text,
    "created_at": as_timestamp,
    "completed_at": as_timestamp,
    "background": as_bool,
    "service_tier": as_text,
    "store": as_bool,
    "temperature": as_float,
    "top_p": as_float,
    "frequency_penalty": as_float,
    "presence_penalty": as_float,
    "top_logprobs": as_int32,
    "parallel_tool_calls": as_bool,
    "truncation": as_text,
    "max_output_tokens": as_bigint,
    "max_tool_calls": as_bigint,
    "previous_response_id": as_text,
    "user": as_text,
    "safety_identifier": as_text,
    "prompt_cache_key": as_text,
    "prompt_cache_retention": as_text,
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


def normalize(body: Mapping[str, Any], *, max_rows: int | None = None) -> NormalizedResponse:
    """Turn a parsed Response body into rows for the archive tables.

    Args:
        body: the parsed JSON body of ``GET /responses/{id}`` (any provider).
        max_rows: the most child rows it may make (:mod:`archiver.row_budget`); None:
            no limit.

    Returns:
        The ``responses`` row (without the store's columns) and the child rows.

    Raises:
        NormalizationError: the body is not a JSON object, or has no string ``id``;
            :class:`~archiver.row_budget.TooManyRows` past ``max_rows``.
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
    if max_rows is None:
        children: Rows = {name: [] for name in _CHILD_TABLE_NAMES}
    else:
        budget = RowBudget(max_rows)
        children = {name: budget.rows() for name in _CHILD_TABLE_NAMES}
    if output is not None:
        output_rows(response_id, output, children)
    if usage is not None:
        rest = usage_rows(response_id, usage, row, children)
        if rest:
            extra["usage"] = rest
    if tool_usage is not None:
        tool_usage_rows(response_id, "tool_usage", tool_usage, children["tool_usage"])
    row["extra"] = extra or None
    if max_rows is not None:  # plain lists again (a copy of the pointers only)
        children = {name: list(rows) for name, rows in children.items()}
    return NormalizedResponse(response=row, children=children, tools=tools)


def _lift_scalars(row: Row) -> None:
    """Copy often-filtered scalars out of structured top-level fields."""
    error = row["error"]
    if type(error) is dict:
        row["error_code"] = as_text(error.get("code"))
        row["error_message"] = as_text(error.get("message"))
    incomplete = row["incomplete_details"]
    if type(incomplete) is dict:
        row["incomplete_reason"] = as_text(incomplete.get("reason"))
    reasoning = row["reasoning"]
    if type(reasoning) is dict:
        row["reasoning_effort"] = as_text(reasoning.get("effort"))
        row["reasoning_summary"] = as_text(reasoning.get("summary"))
    conversation = row["conversation"]
    if type(conversation) is dict:
        row["conversation_id"] = as_text(conversation.get("id"))
    elif type(conversation) is str:
        row["conversation_id"] = conversation


def normalize_body(raw: bytes, body: Any = None) -> NormalizedResponse:
    """Normalize an archived body (parsing it unless ``body`` is given); raises on a poison body.

    Lone UTF-16 surrogates (a token boundary inside an emoji) cannot be stored as text:
    the derived columns get U+FFFD for them, while ``raw`` keeps the exact bytes. The
    body may make :func:`~archiver.row_budget.max_rows` child rows for its size.
    """
    if body is None:
        body = loads(raw)
    if not isinstance(body, dict):
        raise NormalizationError("body is not a JSON object")
    if b"\\ud" in raw or b"\\uD" in raw:
        body = scrub_surrogates(body)
    return normalize(body, max_rows=max_rows(len(raw)))
