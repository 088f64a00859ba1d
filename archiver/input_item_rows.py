"""The rows of a response's input items (``GET /responses/{id}/input_items``).

Input items are content-addressed: each row carries the SHA-256 of the item's canonical
JSON (:func:`item_digest`), and the store keeps each distinct item once. The list's own
fields (DashScope: ``id``, ``model``, ``created_at`` in milliseconds) become one
``input_item_lists`` row. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from archiver.jsontext import json_bytes
from archiver.typed_columns import Row, as_timestamp


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
        return as_timestamp(value / 1000)
    return as_timestamp(value)


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
