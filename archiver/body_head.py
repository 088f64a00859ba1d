"""What the fetcher needs of a 200 body (a JSON object? its ``id``, its ``status``), decided
without building the object tree for a large body.

The fetcher only checks a body; the writer parses it again to normalize it. Parsed, a body
within every limit of :mod:`archiver.parse_limits` may still take ~17 times its size
(objects of 256 repeated member names, each holding a one-string array): with the
fetcher's parse beside the writer's, three bodies of 16 MiB at once took ``archiver run
--once`` to 595 MiB (``--writer process``) and 773 MiB (``inline``), past README's
512 MiB. So a body of :data:`SHALLOW_FROM` bytes or more is checked by msgspec against a
struct of ``id`` and ``status`` only (both :class:`msgspec.Raw`: every other member, and
those two when they are not strings, is validated and skipped, never built) after the
same pre-parse limits as :func:`archiver.jsontext.loads` and a UTF-8 check in slices.
Smaller bodies keep the exact parse.

The contract: a body this accepts is one ``loads`` accepts, with the same ``id`` and
``status`` (each string is read by ``loads`` itself, from its own text); a body this
refuses is one ``loads`` refuses, with the same limit error or a comparable reason.
Where msgspec and ``loads`` part:

- invalid UTF-8 inside a skipped string: msgspec does not look; :func:`_check_utf8` does.
- lone UTF-16 surrogate escapes (``"\\ud83d"``): msgspec refuses them, ``loads`` (the
  standard library's parse) takes them. A body msgspec refuses that holds a surrogate
  escape is checked again with each ``\\uD`` made ``\\u0`` (the same length, the same
  validity otherwise); if ``id`` or ``status`` then holds an escape, ``loads`` decides.
- a top-level value that is not an object: msgspec says so before it reads the rest, so
  the body is validated again as a :class:`msgspec.Raw`, and its kind read from its first byte.

Duplicate members: msgspec, orjson and the standard library all keep the last.
``tests/unit/test_body_head.py`` compares this with ``loads`` on each of these cases.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from archiver.ids import json_type_name
from archiver.jsontext import STDLIB_FROM, check_limits_of, loads

__all__ = ["SHALLOW_FROM", "BodyHead", "NotJson", "read_head"]

SHALLOW_FROM: Final = STDLIB_FROM
"""Bodies of this many bytes or more are checked without their parse (see the module
docstring): the size from which ``loads`` parses with the standard library, one threshold
for "a large body" (the writer writes such a body on its own: ``writer.LARGE_BODY_BYTES``)."""

_UTF8_SLICE: Final = 1 << 20
_JSON_WHITESPACE: Final = re.compile(rb"[ \t\r\n]*")
_KINDS: Final = {
    ord("{"): "object",
    ord("["): "array",
    ord('"'): "string",
    ord("t"): "boolean",
    ord("f"): "boolean",
    ord("n"): "null",
}


class NotJson(ValueError):
    """The body is not JSON, in msgspec's words (or where its UTF-8 breaks)."""


class _Head(msgspec.Struct):
    id: msgspec.Raw = msgspec.Raw(b"null")
    status: msgspec.Raw = msgspec.Raw(b"null")


_HEAD_DECODER: Final = msgspec.json.Decoder(_Head)
_RAW_DECODER: Final = msgspec.json.Decoder(msgspec.Raw)


@dataclass(frozen=True, slots=True)
class BodyHead:
    """The top of a JSON body, as the fetcher judges it.

    ``kind``: the JSON type of the body (``object``, ``array``, ...). ``id``: its ``id``
    member when that is a string, else None; ``id_kind``: the member's JSON type (``null``
    when absent). ``status``: its ``status`` member when that is a string. ``parsed``: the
    body parsed, for a body under :data:`SHALLOW_FROM` only.
    """

    kind: str
    id: str | None = None
    id_kind: str = "null"
    status: str | None = None
    parsed: Any = None

    @classmethod
    def of_value(cls, value: Any) -> BodyHead:
        """The head of a parsed body."""
        if not isinstance(value, dict):
            return cls(json_type_name(value), parsed=value)
        body_id, status = value.get("id"), value.get("status")
        return cls(
            "object",
            body_id if isinstance(body_id, str) else None,
            json_type_name(body_id),
            status if isinstance(status, str) else None,
            value,
        )


def read_head(body: bytes) -> BodyHead:
    """The head of ``body``: parsed by :func:`archiver.jsontext.loads` under :data:`SHALLOW_FROM`
    bytes, checked without building it from there.

    Raises:
        ValueError: ``loads`` would refuse the body: its own errors (the limits of
            :mod:`archiver.parse_limits` among them), or :class:`NotJson`.
    """
    if len(body) < SHALLOW_FROM:
        return BodyHead.of_value(loads(body))
    check_limits_of(body)
    _check_utf8(body)
    try:
        head, replaced = _decode(_HEAD_DECODER, body)
    except msgspec.ValidationError:  # valid up to the top-level value, which is no object
        _decode(_RAW_DECODER, body)
        first = body[_JSON_WHITESPACE.match(body).end()]  # type: ignore[union-attr]  # always matches
        return BodyHead(_KINDS.get(first, "number"))
    id_text, status_text = bytes(head.id), bytes(head.status)
    if replaced and (b"\\" in id_text or b"\\" in status_text):
        return BodyHead.of_value(loads(body))  # read from the copy: loads decides (rare)
    body_id, status = _string(id_text), _string(status_text)
    id_kind = "string" if body_id is not None else _KINDS.get(id_text[0], "number")
    return BodyHead("object", body_id, id_kind, status)


def _decode(decoder: msgspec.json.Decoder[Any], body: bytes) -> tuple[Any, bool]:
    """``decoder``'s value of ``body``, and whether lone surrogate escapes had to be replaced.

    Raises:
        msgspec.ValidationError: the top-level value is not what ``decoder`` takes.
        NotJson: ``body`` is not JSON (other than for a lone surrogate escape).
    """
    try:
        return decoder.decode(body), False
    except msgspec.ValidationError:
        raise
    except msgspec.DecodeError as exc:
        if b"\\ud" not in body and b"\\uD" not in body:
            raise NotJson(str(exc)) from None
    try:
        return decoder.decode(body.replace(b"\\ud", b"\\u0").replace(b"\\uD", b"\\u0")), True
    except msgspec.ValidationError:
        raise
    except msgspec.DecodeError as exc:
        raise NotJson(str(exc)) from None


def _string(text: bytes) -> str | None:
    """The string whose JSON text is ``text``, as ``loads`` reads it; None for another value."""
    if not text.startswith(b'"'):
        return None
    value = loads(text)
    assert isinstance(value, str)
    return value


def _check_utf8(body: bytes) -> None:
    """Refuse ``body`` unless it is strict UTF-8 (as ``loads`` decodes it), a slice at a time,
    each cut before a character's lead byte: no copy of the whole body, decoded or not.

    Raises:
        NotJson: naming the first byte that breaks it.
    """
    if body.isascii():
        return
    view = memoryview(body)
    start = 0
    while start < len(body):
        end = min(start + _UTF8_SLICE, len(body))
        for _ in range(3):  # a character is at most 4 bytes: back to its lead byte
            if end < len(body) and 0x80 <= body[end] <= 0xBF:
                end -= 1
        try:
            codecs.utf_8_decode(view[start:end], "strict", True)
        except UnicodeDecodeError as exc:
            raise NotJson(
                f"invalid UTF-8 at byte {start + exc.start} (0x{body[start + exc.start]:02x}): {exc.reason}"
            ) from None
        start = end
