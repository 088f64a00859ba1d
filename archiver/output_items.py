"""The rows of a response's ``output``: one per item, per content part, per annotation.

Every item gets an ``output_items`` row; the parts of its ``content`` (any item type)
get ``content_parts`` rows, and their annotations ``annotations`` rows. The tables of
one item type are filled by :data:`archiver.item_types.ITEM_HANDLERS`. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from archiver.item_types import ITEM_HANDLERS
from archiver.opaque import without_opaque
from archiver.typed_columns import (
    Columns,
    Row,
    Rows,
    as_int32,
    as_json_text,
    as_text,
    element_extra,
    element_row,
    fill_row,
)

_ITEM: Final = Columns.of(
    ("id", "id", as_text),
    ("type", "type", as_text),
    ("role", "role", as_text),
    ("status", "status", as_text),
    ("phase", "phase", as_text),
    ("name", "name", as_text),
    ("namespace", "namespace", as_text),
    ("call_id", "call_id", as_text),
    ("arguments", "arguments", as_json_text),
    ("server_label", "server_label", as_text),
    ("approval_request_id", "approval_request_id", as_text),
    ("code", "code", as_text),
    ("container_id", "container_id", as_text),
    ("goal", "goal", as_text),
    ("input", "input", as_json_text),
    ("output", "output", as_json_text),
    ("error", "error", as_json_text),
    ("execution", "execution", as_text),
    ("created_by", "created_by", as_text),
)


def output_rows(response_id: str, output: list[Any], children: Rows) -> None:
    """Fill the item-level tables."""
    items = children["output_items"]
    for position, item in enumerate(output):
        row: Row = {"response_id": response_id, "position": position}
        if type(item) is not dict:
            for column, _, _ in _ITEM.fields:
                row[column] = None
            row["extra"] = element_extra(item)
            items.append(row)
            continue
        item_type = as_text(item.get("type"))
        spread: tuple[str, ...] = ()
        content = item.get("content")
        if type(content) is list:
            _content_rows(response_id, position, item_type, content, children)
            spread = ("content",)
        handler = ITEM_HANDLERS.get(item_type) if item_type is not None else None
        if handler is not None:
            spread += handler(response_id, position, item, children)
        fill_row(row, item, _ITEM, spread)
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


_PART: Final = Columns.of(
    ("type", "type", as_text),
    ("text", "text", as_text),
    ("refusal", "refusal", as_text),
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
            row.update(type=None, text=None, refusal=None, logprobs=None, extra=element_extra(part))
            parts.append(row)
            continue
        annotations = part.get("annotations")
        spread = ("annotations",) if type(annotations) is list else ()
        fill_row(row, part, _PART, spread)
        row["logprobs"] = without_opaque(part.get("logprobs"))
        parts.append(row)
        if type(annotations) is list:
            _annotation_rows(response_id, item_position, position, annotations, children)


_ANNOTATION: Final = Columns.of(
    ("type", "type", as_text),
    ("url", "url", as_text),
    ("title", "title", as_text),
    ("start_index", "start_index", as_int32),
    ("end_index", "end_index", as_int32),
    ("file_id", "file_id", as_text),
    ("filename", "filename", as_text),
    ("container_id", "container_id", as_text),
    ("file_index", "index", as_int32),
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
        element_row(row, annotation, _ANNOTATION)
        rows.append(row)
