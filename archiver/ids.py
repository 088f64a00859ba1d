"""Response IDs: what a valid one looks like, how it goes into a URL, how to read ID lists.

Providers spell IDs differently (``resp_…`` on DashScope and OpenAI, bare UUIDs on
DeepSeek, ``gen-…`` on OpenRouter, ``…_us-east-1`` on xAI), so the rule is a character
set, not a prefix: 1 to 256 ASCII letters, digits and ``_ - . :``. Everything else is
rejected, and an accepted ID is still always URL-quoted in the request path.

Pure and fast: ``archiver enqueue`` pushes millions of lines through
:func:`parse_id_lines`, whose plain-ID path is one ``strip`` and one regex match.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from archiver.errors import InvalidResponseId
from archiver.settings import SOURCE_NAME

__all__ = [
    "MAX_ID_LENGTH",
    "IdLine",
    "RejectedLine",
    "parse_id_lines",
    "response_id_problem",
    "response_path",
    "validate_response_id",
]

MAX_ID_LENGTH = 256
"""Longest accepted response ID, in characters."""

# Dots-only IDs ("." and "..") are path traversal once a proxy decodes %2E, so they are
# refused even though every character is allowed.
_VALID_ID = re.compile(r"(?!\.+\Z)[A-Za-z0-9_.:\-]{1,256}\Z")
_ALLOWED_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.:")
_TEXT_LIMIT = 80
_JSON_ID_FIELDS = "'id', 'response_id' or 'response.id'"


@dataclass(frozen=True, slots=True)
class IdLine:
    """An accepted response ID and the 1-based physical line it came from.

    ``created_at`` (unix seconds) is taken from a JSON line's ``created_at`` (or
    ``response.created_at``) when present: it dates the response for expiry warnings.
    ``source`` is a JSON line's ``source`` (a valid source name; None: the enqueuer's).
    """

    line_no: int
    response_id: str
    created_at: float | None = None
    source: str | None = None


@dataclass(frozen=True, slots=True)
class RejectedLine:
    """A line that holds no usable response ID.

    ``text`` is the line as read (whitespace trimmed, cut to about 80 characters). It is
    not escaped: escape control characters before printing it to a terminal.
    """

    line_no: int
    reason: str
    text: str


def response_id_problem(value: object) -> str | None:
    """Say what is wrong with a candidate response ID.

    Args:
        value: the candidate, normally a ``str``.

    Returns:
        None when ``value`` is a valid response ID, else a short reason such as
        ``"empty"``, ``"longer than 256 characters (300)"`` or
        ``"character '/' not allowed"``.
    """
    if not isinstance(value, str):
        return f"not a string ({json_type_name(value)})"
    if _VALID_ID.match(value):
        return None
    if not value:
        return "empty"
    if len(value) > MAX_ID_LENGTH:
        return f"longer than {MAX_ID_LENGTH} characters ({len(value)})"
    for char in value:
        if char not in _ALLOWED_CHARS:
            return f"character {_describe_char(char)} not allowed"
    return f"{value!r} is not an ID (only dots: a path traversal)"


def validate_response_id(value: str) -> str:
    """Check a response ID and return it unchanged.

    Args:
        value: the ID, e.g. from the command line. It is not trimmed.

    Returns:
        ``value``.

    Raises:
        InvalidResponseId: with a message naming the ID and the specific reason.
    """
    if isinstance(value, str) and _VALID_ID.match(value):
        return value
    problem = response_id_problem(value)
    assert problem is not None
    shown = _shorten(value) if isinstance(value, str) else type(value).__name__
    raise InvalidResponseId(f"invalid response ID {shown!r}: {problem}")


def response_path(response_id: str) -> str:
    """Return the request path of a response, relative to the base URL.

    The ID is always percent-quoted (``safe=""``), so even an unvalidated ID cannot add
    path segments or a query string.

    Args:
        response_id: the response ID.

    Returns:
        ``"responses/" + quoted ID``.
    """
    return "responses/" + urllib.parse.quote(response_id, safe="")


def parse_id_lines(lines: Iterable[str], *, start: int = 1) -> Iterator[IdLine | RejectedLine]:
    """Read response IDs from text lines, one result per line that is not skipped.

    A line is either a bare ID or a JSON object (e.g. an application log line) holding
    the ID in ``id``, else ``response_id``, else ``response.id``; the first of these
    that holds a string decides. Blank lines and lines starting with ``#`` are skipped;
    surrounding whitespace (``\\r`` included) is trimmed; a UTF-8 BOM on the first line
    is ignored.

    Args:
        lines: physical lines, with or without their line endings (a file object works).
        start: the line number of the first line (when ``lines`` continue a stream).

    Yields:
        :class:`IdLine` for each accepted ID and :class:`RejectedLine` for each line
        that is neither blank, a comment, nor a usable ID, with 1-based line numbers.
    """
    match = _VALID_ID.match
    for line_no, raw in enumerate(lines, start):
        line = raw.strip()
        if match(line):
            yield IdLine(line_no, line)
            continue
        if line_no == 1 and line.startswith("\ufeff"):
            line = line[1:].strip()
            if match(line):
                yield IdLine(line_no, line)
                continue
        if not line or line[0] == "#":
            continue
        yield _parse_slow_line(line_no, line)


def _parse_slow_line(line_no: int, line: str) -> IdLine | RejectedLine:
    """Handle a non-blank line that is not a bare valid ID: JSON, or a rejection."""
    first = line[0]
    if first == "{":
        return _parse_json_line(line_no, line)
    if first in '["':
        # Probably JSON that is not an object, e.g. `jq .id` without -r.
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError:
            pass
        else:
            hint = " (use jq -r for raw IDs)" if isinstance(value, str) else ""
            return RejectedLine(
                line_no, f"JSON {json_type_name(value)} is not an object{hint}", _shorten(line)
            )
    problem = response_id_problem(line)
    assert problem is not None
    return RejectedLine(line_no, f"invalid response ID: {problem}", _shorten(line))


def _parse_json_line(line_no: int, line: str) -> IdLine | RejectedLine:
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return RejectedLine(line_no, f"not valid JSON: {exc}", _shorten(line))
    if not isinstance(record, dict):
        return RejectedLine(line_no, f"JSON {json_type_name(record)} is not an object", _shorten(line))
    for field, candidate in _json_id_candidates(record):
        if isinstance(candidate, str):
            problem = response_id_problem(candidate)
            if problem is None:
                source = record.get("source")
                if source is not None and not (isinstance(source, str) and SOURCE_NAME.match(source)):
                    return RejectedLine(
                        line_no,
                        "field 'source' is not a source name (letters, digits and _ . -, up to 64)",
                        _shorten(line),
                    )
                return IdLine(line_no, candidate, _created_at(record), source)
            return RejectedLine(
                line_no, f"field {field!r} is not a valid response ID: {problem}", _shorten(line)
            )
    return RejectedLine(line_no, f"JSON object has no string {_JSON_ID_FIELDS} field", _shorten(line))


def _created_at(record: dict[str, Any]) -> float | None:
    """Unix seconds from ``created_at`` or ``response.created_at`` (number or ISO 8601)."""
    value = record.get("created_at")
    if value is None and isinstance(record.get("response"), dict):
        value = record["response"].get("created_at")
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        seconds = parsed.timestamp()
    else:
        return None
    if seconds > 1e11:  # milliseconds, as some loggers write them
        seconds /= 1000.0
    return seconds if 1e9 <= seconds <= 1e11 else None


def _json_id_candidates(record: dict[str, Any]) -> Iterator[tuple[str, object]]:
    yield "id", record.get("id")
    yield "response_id", record.get("response_id")
    response = record.get("response")
    if isinstance(response, dict):
        yield "response.id", response.get("id")


def json_type_name(value: object) -> str:
    """The JSON name of a parsed value's type (for error messages)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _describe_char(char: str) -> str:
    if char == " ":
        return "' ' (space)"
    if char.isprintable():
        if char.isascii():
            return repr(char) if char != "'" else '"\'"'
        return f"'{char}' (U+{ord(char):04X}, not ASCII)"
    return f"U+{ord(char):04X}"


def _shorten(text: str) -> str:
    if len(text) <= _TEXT_LIMIT:
        return text
    return text[: _TEXT_LIMIT - 3] + "..."
