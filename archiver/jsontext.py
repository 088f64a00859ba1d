"""Compact JSON of values parsed from bodies: orjson, or the standard library where orjson stops.

orjson refuses nesting deeper than 254 levels, integers beyond 64 bits and lone UTF-16
surrogates (a token boundary inside an emoji), all of which valid bodies hold; the
standard library takes them, more slowly. Every JSON column, digest and export of a
parsed value goes through here, so they agree on the text of one value.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def json_bytes(value: Any, *, sort_keys: bool = False) -> bytes:
    """Compact UTF-8 JSON of ``value`` (keys sorted when ``sort_keys``); lone surrogates are
    kept as they are (``surrogatepass``), so a digest of them is a digest, not an error."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS if sort_keys else None)
    except orjson.JSONEncodeError:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=sort_keys)
        return text.encode("utf-8", "surrogatepass")


def json_text(value: Any, *, sort_keys: bool = False) -> str:
    """:func:`json_bytes` as a string (what JSON columns are bound with)."""
    return json_bytes(value, sort_keys=sort_keys).decode("utf-8", "surrogatepass")


def loads(raw: bytes) -> Any:
    """Parse JSON as the fetcher accepts it: orjson, or :func:`loads_stdlib` for valid
    JSON that orjson refuses.

    Raises:
        ValueError: not JSON (``orjson.JSONDecodeError`` and ``UnicodeDecodeError`` are
            ValueErrors). RecursionError: nested too deep for the standard library.
    """
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return loads_stdlib(raw)


def loads_stdlib(raw: bytes) -> Any:
    """The standard library's parse, for valid JSON that orjson refuses: lone UTF-16
    surrogate escapes (``"\\ud83d"``, a token boundary inside an emoji in real model
    output) and numbers beyond a double. ``NaN`` and ``Infinity`` are refused, as orjson
    refuses them. Raises as :func:`loads` does."""
    return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
