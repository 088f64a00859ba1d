"""Opaque payloads: long strings that stay only in ``raw``.

Base64 images, encrypted reasoning and ``data:`` URLs of :data:`OPAQUE_MIN_CHARS` or more
(see :func:`is_opaque`) are not copied into the normalized tables: where one was, a stub
(:func:`opaque_stub`) records its length and SHA-256, and ``raw`` keeps the payload itself.
Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Final

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
