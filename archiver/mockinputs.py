"""The input items the mock Responses API serves (``GET /responses/{id}/input_items``)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from functools import lru_cache
from typing import Any, Final

import orjson

from archiver.mockbodies import GATED_INCLUDE, PLAIN_TEXTS, body_for
from archiver.mockscenarios import scenario_of

INPUT_PAGE_DEFAULT: Final = 20
INPUT_PAGE_MAX: Final = 100
_INPUT_TEXTS: Final = (
    "What is the weather in Hangzhou today?",
    "请用三句话总结这篇文章。",
    "Write a haiku about archives 📚",
    "Look up the latest exchange rate for CNY/EUR.",
    "Explain the difference between TCP and UDP.",
)


_PIXEL_PNG: Final = (
    "data:image/png;base64,"
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="
)


def input_items_for(response_id: str, include: Iterable[str] = ()) -> tuple[dict[str, Any], ...]:
    """The input items the mock serves for an ID, oldest first (deterministic).

    ``manyinputs`` IDs have 230 items (three pages of 100); ``gated`` IDs a user message
    with an ``input_image`` and a ``computer_call_output``, whose ``image_url`` fields
    appear only for their ``include`` values; others 1-4: a system message, user
    messages with ``input_text`` parts, and a function call output.
    """
    name, count = scenario_of(response_id)
    if name == "gated":
        return _gated_input_items(response_id, frozenset(include) & frozenset(GATED_INCLUDE))
    if name == "chain":
        return _chain_input_items(response_id.split("_", 2)[2], count or 1)
    return _input_items(response_id)


def _chain_input_items(conversation: str, turn: int) -> tuple[dict[str, Any], ...]:
    """Turns 1..turn of a conversation: user messages and, before the last, the answers."""
    items: list[dict[str, Any]] = []
    for t in range(1, turn + 1):
        stem = hashlib.sha256(f"{conversation}/{t}".encode()).hexdigest()
        text = _INPUT_TEXTS[t % len(_INPUT_TEXTS)]
        items.append(
            {
                "id": f"msg_{stem[:24]}",
                "type": "message",
                "role": "user",
                "status": "completed",
                "content": [{"type": "input_text", "text": f"{text} (turn {t} of {conversation})"}],
            }
        )
        if t < turn:
            answer = PLAIN_TEXTS[t % len(PLAIN_TEXTS)]
            items.append(
                {
                    "id": f"msg_{stem[24:48]}",
                    "type": "message",
                    "role": "assistant",
                    "status": "completed",
                    "content": [{"type": "output_text", "text": f"{answer} (turn {t})", "annotations": []}],
                }
            )
    return tuple(items)


@lru_cache(maxsize=64)
def _gated_input_items(response_id: str, gates: frozenset[str]) -> tuple[dict[str, Any], ...]:
    stem = hashlib.sha256(response_id.encode()).hexdigest()
    image: dict[str, Any] = {"type": "input_image", "detail": "auto", "file_id": None}
    if "message.input_image.image_url" in gates:
        image["image_url"] = _PIXEL_PNG
    screenshot: dict[str, Any] = {"type": "computer_screenshot", "file_id": f"file_{stem[:24]}"}
    if "computer_call_output.output.image_url" in gates:
        screenshot["image_url"] = _PIXEL_PNG
    return (
        {
            "id": f"msg_{stem[:24]}",
            "type": "message",
            "role": "user",
            "status": "completed",
            "content": [{"type": "input_text", "text": "What is in this picture?"}, image],
        },
        {
            "id": f"cuo_{stem[24:48]}",
            "type": "computer_call_output",
            "status": "completed",
            "call_id": f"call_{stem[:12]}",
            "output": screenshot,
        },
    )


@lru_cache(maxsize=4096)
def _input_items(response_id: str) -> tuple[dict[str, Any], ...]:
    name, _ = scenario_of(response_id)
    digest = hashlib.sha256(response_id.encode()).digest()
    count = 230 if name == "manyinputs" else 1 + digest[0] % 4
    items: list[dict[str, Any]] = []
    for i in range(count):
        item_id = f"msg_{hashlib.sha256(f'{response_id}/{i}'.encode()).hexdigest()[:24]}"
        if i == 0 and count > 2:
            items.append(
                {
                    "id": item_id,
                    "type": "message",
                    "role": "system",
                    "status": "completed",
                    "content": [{"type": "input_text", "text": "You are a helpful assistant."}],
                }
            )
        elif i % 5 == 3:
            items.append(
                {
                    "id": item_id,
                    "type": "function_call_output",
                    "status": "completed",
                    "call_id": f"call_{item_id[4:16]}",
                    "output": '{"temperature": 21}',
                }
            )
        else:
            text = _INPUT_TEXTS[(digest[1] + i) % len(_INPUT_TEXTS)]
            items.append(
                {
                    "id": item_id,
                    "type": "message",
                    "role": "user",
                    "status": "completed",
                    "content": [{"type": "input_text", "text": f"{text} (#{i})"}],
                }
            )
    return tuple(items)


def _dashscope_list_fields(response_id: str) -> dict[str, Any]:
    """What DashScope's input-item lists carry besides the page: the response's ID, model
    and creation time in milliseconds (its Response object has it in seconds)."""
    body = orjson.loads(body_for(response_id))
    stem = hashlib.sha256(response_id.encode()).digest()
    millis = int(body.get("created_at", 0)) * 1000 + int.from_bytes(stem[:2], "big") % 1000
    return {"id": response_id, "model": body.get("model"), "created_at": millis}


def input_items_page(
    response_id: str, query: Any, include: Iterable[str] = (), *, dashscope: bool = False
) -> bytes | None:
    """One page of ``GET /responses/{id}/input_items``, or None for a bad query."""
    items = list(input_items_for(response_id, include))
    try:
        limit = int(query.get("limit", INPUT_PAGE_DEFAULT))
    except ValueError:
        return None
    if not 1 <= limit <= INPUT_PAGE_MAX:
        return None
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        return None
    if order == "desc":
        items.reverse()
    after = query.get("after")
    if after:
        ids = [item["id"] for item in items]
        if after not in ids:
            return None
        items = items[ids.index(after) + 1 :]
    page = items[:limit]
    listed: dict[str, Any] = {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(items) > limit,
    }
    if dashscope:
        listed.update(_dashscope_list_fields(response_id))
    return orjson.dumps(listed)
