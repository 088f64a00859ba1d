"""A server that echoes a secret: keep it out of the rows derived from an archived body.

Archived ``raw`` bodies stay byte-exact, secret and all (see :mod:`archiver.redaction`).
Everything derived from them (``responses`` columns, child rows, input items, input-item
lists, and so every export) must not hold a registered secret. The writer normalizes in a
process that never receives the API key, so the fetching process, which has it
registered, checks each archived result here first:

- :func:`echoes_secret` is the fast path every result takes: a byte search of ``raw``
  for the first and the last half of every registered form of every secret (no parse,
  no copy; see :func:`archiver.redaction.contains_secret`). Only a body with JSON
  escapes (``\\u``, ``\\/``) that could spell a secret the search does not see is
  serialized again without them and searched once more; input items are searched in the
  same serialized form. A body of ``body_head.SHALLOW_FROM`` bytes or more is not parsed
  for it (the fetcher holds no large parse: see :mod:`archiver.body_head`): its escapes
  are decoded in place, a window at a time (:func:`_unescaped_holds_secret`), which
  writes every string as the serialized form does.
- :func:`scrub_derived` is the slow path, for a result that may hold one: it normalizes
  here (:func:`archiver.writer.prepare`) and masks registered secrets in every string of
  the rows (:func:`archiver.redaction.redact_secrets`), so the writer stores them as they are.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace
from typing import Any, Final

from archiver.body_head import SHALLOW_FROM
from archiver.jsontext import json_bytes, loads
from archiver.normalize import NormalizedResponse, map_strings, normalize_input_items
from archiver.outcomes import Archived
from archiver.redaction import contains_secret, longest_needle, redact_secrets
from archiver.store import FetchResult
from archiver.writer import prepare

__all__ = ["body_echoes_secret", "echoes_secret", "scrub_derived", "scrub_rows"]

_ESCAPES = (b"\\u", b"\\/")
"""JSON escapes that can spell a secret's characters so that a byte search misses it."""


def _unescaped(value: Any) -> bytes:
    """``value`` as JSON text with no escapes but those JSON requires (``"``, ``\\``, controls)."""
    return json_bytes(value)


def body_echoes_secret(raw: bytes, body: Any = None) -> bool:
    """Whether an archived body may hold a registered secret (``body``: ``raw`` parsed, if at hand).

    Also for whatever re-derives rows from ``raw`` (a renormalize): it must scrub a body
    this flags with :func:`scrub_rows`, and can only know the secrets registered in its process.
    """
    if contains_secret(raw):
        return True
    if any(escape in raw for escape in _ESCAPES):
        if body is None and len(raw) >= SHALLOW_FROM:
            return _unescaped_holds_secret(raw)
        parsed = body if body is not None else _loads(raw)
        return parsed is not None and contains_secret(_unescaped(parsed))
    return False


# A JSON escape: a surrogate pair (groups 1, 2), another \uXXXX (group 3), or a
# one-character escape (group 4). In valid JSON every backslash starts one, and a scan
# from the start pairs an escaped backslash (\\) before it can start another.
_ESCAPE: Final = re.compile(
    rb"\\(?:u([dD][89abAB][0-9a-fA-F]{2})\\u([dD][c-fC-F][0-9a-fA-F]{2})|u([0-9a-fA-F]{4})|(.))", re.DOTALL
)
_SHORT_ESCAPES: Final = {0x08: b"\\b", 0x09: b"\\t", 0x0A: b"\\n", 0x0C: b"\\f", 0x0D: b"\\r"}
_WINDOW: Final = 1 << 16


def _unescaped_holds_secret(raw: bytes) -> bool:
    """Whether ``raw`` (valid JSON) holds a registered secret once its escapes are written as
    :func:`_unescaped` writes them, searched a window at a time (each window starting with
    the end of the one before, as long as the longest piece looked for): every string is
    then byte for byte as in the serialized form, and nothing is parsed."""
    overlap = longest_needle()
    if overlap == 0:
        return False
    tail = b""
    for window in _unescaped_windows(raw):
        text = tail + window
        if contains_secret(text):
            return True
        tail = text[-overlap:]
    return False


def _unescaped_windows(raw: bytes) -> Iterator[bytes]:
    """``raw`` with its escapes decoded as the serialized form writes them, in pieces of
    about :data:`_WINDOW` bytes."""
    pieces: list[bytes] = []
    size = start = 0
    for match in _ESCAPE.finditer(raw):
        pieces.append(raw[start : match.start()])
        pieces.append(_written(match))
        size += match.end() - start
        start = match.end()
        if size >= _WINDOW:
            yield b"".join(pieces)
            pieces, size = [], 0
    pieces.append(raw[start:])
    yield b"".join(pieces)


def _written(escape: re.Match[bytes]) -> bytes:
    """How the serialized form (orjson, or the standard library for a lone surrogate) writes
    the character of one escape."""
    high, low, code, other = escape.groups()
    if high is not None:
        return chr(0x10000 + ((int(high, 16) - 0xD800) << 10) + int(low, 16) - 0xDC00).encode()
    if code is None:
        return b"/" if other == b"/" else escape.group()
    char = int(code, 16)
    if char == 0x22:
        return b'\\"'
    if char == 0x5C:
        return b"\\\\"
    if char < 0x20:
        return _SHORT_ESCAPES.get(char, b"\\u%04x" % char)
    return chr(char).encode("utf-8", "surrogatepass")


def echoes_secret(result: FetchResult) -> bool:
    """Whether the body or the input items of an archived result may hold a registered secret."""
    outcome = result.outcome
    if not isinstance(outcome, Archived):
        return False
    if body_echoes_secret(outcome.raw, outcome.body):
        return True
    if result.input_items and contains_secret(_unescaped([row["item"] for row in result.input_items])):
        return True
    return result.input_list is not None and contains_secret(_unescaped(result.input_list))


def _loads(raw: bytes) -> Any:
    try:
        return loads(raw)
    except (ValueError, RecursionError):  # not JSON, or nested past what the archiver reads
        return None


def scrub_rows(normalized: NormalizedResponse, *, body_echoes: bool = True) -> NormalizedResponse:
    """The rows with every registered secret masked in every string (field names included).

    ``body_echoes``: the body itself holds a secret (not only its input items), so the
    ``responses`` row records ``secret_masked``: a rebuild that cannot find that secret
    again (run without the key) must leave these rows alone (:mod:`archiver.rebuild`).
    """
    response = map_strings(normalized.response, redact_secrets)
    if body_echoes:
        response["secret_masked"] = True
    return NormalizedResponse(
        response=response,
        children={name: map_strings(rows, redact_secrets) for name, rows in normalized.children.items()},
        tools=map_strings(normalized.tools, redact_secrets),
    )


def scrub_derived(result: FetchResult) -> FetchResult:
    """The result normalized here, with every registered secret masked in its derived rows.

    ``raw`` is left as it is. A body that cannot be normalized fails its ID as the writer
    would fail it (the caller scrubs the failure's reason and forensic body).
    """
    result = prepare(result)
    normalized = None
    if result.normalized is not None:
        outcome = result.outcome
        body_echoes = isinstance(outcome, Archived) and body_echoes_secret(outcome.raw, outcome.body)
        normalized = scrub_rows(result.normalized, body_echoes=body_echoes)
    input_items = result.input_items
    if input_items is not None:
        # Digests again: input_item_contents keeps each distinct (scrubbed) item once.
        input_items = normalize_input_items(
            result.job.response_id, [map_strings(row["item"], redact_secrets) for row in input_items]
        )
    input_list = result.input_list
    if input_list is not None:
        input_list = map_strings(input_list, redact_secrets)
    return replace(result, normalized=normalized, input_items=input_items, input_list=input_list)
