"""Compact JSON of values parsed from bodies: orjson, or the standard library where orjson stops.

orjson refuses nesting deeper than 254 levels, integers beyond 64 bits (writing) and lone
UTF-16 surrogates (a token boundary inside an emoji), all of which valid bodies hold, and
it reads an integer beyond 64 bits as the nearest double without a word
(``123456789012345678901234567890`` becomes ``1.2345678901234568e+29``); the standard
library takes them all exactly, more slowly. Every JSON column, digest and export of a
parsed value, and every JSON column read back, goes through here, so they agree on the
text of one value and a derived column never holds an integer its ``raw`` body does not
(a number with a fraction or an exponent is the nearest double, as ever).

A body may nest at most :data:`MAX_NESTING` levels (512; a real Response nests fewer than
20). The standard library's parse recurses, so how deep it reaches would otherwise
depend on how deep in the stack it is called: the fetcher would archive bodies that
``renormalize``, ``compact`` or the export, called from deeper, could not read back. With a
limit of the archiver's own, checked without recursion before the parse, every reader
agrees with the fetcher and has about 500 frames to spare.

Text of :data:`STDLIB_FROM` (1 MiB) or more is parsed by the standard library too:
orjson builds yyjson's document of the whole text before the Python objects and holds
both until it returns, so its parse of a 16 MiB body dense in small values peaked at
16-22 times the body (259-360 MiB over it), where the objects left take 12-17 times;
the standard library builds the objects alone (194-205 MiB), takes one-character
strings from CPython's cache and sizes dicts to their members. :func:`loads` then takes
0.7-1.7 times as long, scan included (1-16 MiB bodies; 16 MiB: 1.35 s against 1.88 for
the members above, 0.81 against 0.69 for the tool listing, 0.21 against 0.13 for plain
text). Text beyond the BMP costs it more (it
decodes the whole text first, 4 bytes a character: 93 MiB against orjson's 63 for
16 MiB of text with emoji), still far below the dense bodies. Both read the same values
from valid JSON (duplicate members: the last value, where the first stood).

A number no double holds (``1e400``, an integer of more digits than CPython converts,
4,300) is parsed as ``None``: JSON ``null`` in the derived columns, as orjson writes a
double out of range, where the standard library would write ``Infinity`` (not JSON:
PostgreSQL refuses it) or refuse the body. ``raw`` keeps the number.
"""

from __future__ import annotations

import enum
import json
import math
import re
from decimal import Decimal
from typing import Any, Final

import orjson

from archiver.parse_limits import (
    BYTES_PER_CONTAINER,
    KEPT_NAMES,
    MAX_NESTING,
    MIN_CONTAINERS,
    PARSED_BYTES_PER_WEIGHT,
    SCAN,
    NestingTooDeep,
    Tally,
    TooManyContainers,
    TooManyStrings,
    TooMuchTogether,
    check_limits,
    costly_numbers,
    json_shape,
    max_containers,
    nesting_depth,
    parse_weight,
    string_counts,
)

__all__ = [
    "BYTES_PER_CONTAINER",
    "KEPT_NAMES",
    "MAX_NESTING",
    "MIN_CONTAINERS",
    "PARSED_BYTES_PER_WEIGHT",
    "NestingTooDeep",
    "Tally",
    "TooManyContainers",
    "TooManyStrings",
    "TooMuchTogether",
    "check_limits_of",
    "costly_numbers",
    "json_bytes",
    "json_shape",
    "json_text",
    "jsonb_text",
    "loads",
    "loads_stdlib",
    "loads_stored",
    "max_containers",
    "nesting_depth",
    "parse_weight",
    "string_counts",
]


def json_bytes(value: Any, *, sort_keys: bool = False) -> bytes:
    """Compact UTF-8 JSON of ``value`` (keys sorted when ``sort_keys``); lone surrogates are
    kept as they are (``surrogatepass``), so a digest of them is a digest, not an error."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS if sort_keys else None)
    except orjson.JSONEncodeError:
        try:
            text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=sort_keys)
        except RecursionError:  # deep in the stack (renormalize): a value the parse took
            text = _dumps_without_recursion(value, sort_keys=sort_keys)
        return text.encode("utf-8", "surrogatepass")


def _dumps_without_recursion(value: Any, *, sort_keys: bool) -> str:
    """What ``json.dumps`` writes for ``value`` (compact, not ASCII-only), with a stack of
    its own instead of Python's: a value parsed near the recursion limit is written from a
    deeper call (the engine's bind processing) however deep it nests."""
    out: list[str] = []
    todo: list[tuple[bool, Any]] = [(False, value)]  # (is literal text, what)
    while todo:
        literal, item = todo.pop()
        if literal:
            out.append(item)
        elif isinstance(item, dict):
            pairs = sorted(item.items()) if sort_keys else list(item.items())
            todo.append((True, "}"))
            for n, (key, member) in enumerate(reversed(pairs)):
                todo.append((False, member))
                todo.append((True, _key_text(key) + ":"))
                if n < len(pairs) - 1:
                    todo.append((True, ","))
            todo.append((True, "{"))
        elif isinstance(item, list | tuple):
            todo.append((True, "]"))
            for n, member in enumerate(reversed(item)):
                todo.append((False, member))
                if n < len(item) - 1:
                    todo.append((True, ","))
            todo.append((True, "["))
        else:
            out.append(json.dumps(item, ensure_ascii=False))
    return "".join(out)


def _key_text(key: Any) -> str:
    """A member name as ``json.dumps`` writes it (it turns numbers, booleans and None into strings)."""
    return json.dumps({key: None}, ensure_ascii=False, separators=(",", ":"))[1:-6]


def json_text(value: Any, *, sort_keys: bool = False) -> str:
    """:func:`json_bytes` as a string (what JSON columns are bound with)."""
    return json_bytes(value, sort_keys=sort_keys).decode("utf-8", "surrogatepass")


def jsonb_text(value: Any) -> str:
    """:func:`json_text` for a PostgreSQL ``jsonb`` column: floats stay floats.

    A double of 1e16 or more is written with an exponent (``1.5e+20``); ``jsonb`` keeps
    numbers as ``numeric`` and would give it back as the integer 150000000000000000000,
    so the export from PostgreSQL had integers where the body and SQLite have floats.
    Written as ``150000000000000000000.0`` instead, ``jsonb`` keeps the fraction and
    :func:`loads` reads a float again. Only text holding ``e+`` pays for the rewrite.
    """
    text = json_text(value)
    if "e+" not in text:
        return text
    return _STRING_OR_EXPONENT_NUMBER.sub(_with_fraction, text)


# A JSON string (left as it is), or a number with a positive exponent (group 1).
_STRING_OR_EXPONENT_NUMBER: Final = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|(-?[0-9]+(?:\.[0-9]+)?e\+[0-9]+)')


def _with_fraction(match: re.Match[str]) -> str:
    number = match.group(1)
    if number is None:
        return match.group(0)
    return format(Decimal(number), "f") + ".0"  # an exponent of 16 or more: integral


# The scan (parse_limits.SCAN) maps digits to "0": a run of 19 zeros in it is a run of 19
# digits in the text: the shortest integer orjson rounds, -9223372036854775809, has 19 (a
# 19-digit run in a string or a fraction only costs the slower parse).
_LONG_DIGIT_RUN: Final = b"0" * 19
# A number no double holds has 200 digits in a row or an exponent of 100 or more (1e99
# times 200 digits stays below 1.8e308); either sends the parse through _finite/_integer.
_VERY_LONG_DIGIT_RUN: Final = b"0" * 200
_LARGE_EXPONENT: Final = re.compile(rb"[eE]\+?0*[1-9][0-9]{2}")


STDLIB_FROM: Final = 1 << 20
"""Text of this many bytes or more is parsed by the standard library, not orjson (see the
module docstring): its peak is the objects alone."""


def loads(raw: bytes | str) -> Any:
    """Parse JSON as the fetcher accepts it, exactly: orjson, or :func:`loads_stdlib` for
    valid JSON that orjson refuses or would read inexactly (an integer beyond 64 bits),
    and for text of :data:`STDLIB_FROM` bytes or more (whose parse orjson would double).

    A scan of the bytes picks the parse and bounds the nesting (``parse_limits.SCAN``); it costs about
    a third of orjson's parse.

    Raises:
        ValueError: not JSON (``orjson.JSONDecodeError`` and ``UnicodeDecodeError`` are
            ValueErrors); :class:`NestingTooDeep` past :data:`MAX_NESTING` and
            :class:`TooManyContainers` past :func:`max_containers` (ValueErrors too).
    """
    return _loads(raw, limited=True)


def check_limits_of(raw: bytes) -> None:
    """Refuse ``raw`` as :func:`loads` refuses it before it parses: nested past
    :data:`MAX_NESTING`, or past a limit of :mod:`archiver.parse_limits` (the same errors).
    For a check that does not build the parse (:mod:`archiver.body_head`)."""
    _scan(raw, limited=True)


def loads_stored(raw: bytes | str) -> Any:
    """:func:`loads` without its limits, for JSON columns read back: the archiver wrote
    them, and rows written before the limits may nest deeper (the export must still read
    them)."""
    return _loads(raw, limited=False)


def _loads(raw: bytes | str, *, limited: bool) -> Any:
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    digits = _scan(data, limited=limited)
    if digits is not _Digits.SHORT or len(data) >= STDLIB_FROM:
        return _parse_stdlib(raw, data, digits)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _parse_stdlib(raw, data, digits)


def loads_stdlib(raw: bytes | str) -> Any:
    """The standard library's parse, for valid JSON that orjson refuses or reads inexactly:
    lone UTF-16 surrogate escapes (``"\\ud83d"``, a token boundary inside an emoji in real
    model output) and integers beyond 64 bits; a number no double holds is ``None`` (see
    the module docstring). ``NaN`` and ``Infinity`` are refused, as orjson refuses them.
    Raises as :func:`loads` does."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    return _parse_stdlib(raw, data, _scan(data, limited=True))


class _Digits(enum.Enum):
    """The longest run of digits in a text, as the parse needs to know it."""

    SHORT = "under 19: orjson reads every integer exactly"
    LONG = "19 or more: an integer orjson would round, maybe"
    VERY_LONG = "200 or more, or an exponent of 100 or more: a number no double holds, maybe"


def _scan(data: bytes, *, limited: bool) -> _Digits:
    """How long the runs of digits in ``data`` are, after refusing (when ``limited``) text
    nested past MAX_NESTING or holding more arrays and objects than :func:`max_containers`.

    Only the answer outlives the call: the translation (a copy of ``data``) is freed
    before the parse, which would otherwise hold it through its own peak (16 MiB more
    at the largest body, in each process that parses it).
    """
    scan = data.translate(SCAN)
    if limited:
        check_limits(data, scan)
    if _LONG_DIGIT_RUN not in scan:
        return _Digits.SHORT
    return _Digits.VERY_LONG if _VERY_LONG_DIGIT_RUN in scan else _Digits.LONG


def _parse_stdlib(raw: bytes | str, data: bytes, digits: _Digits) -> Any:
    """:func:`loads_stdlib` of ``raw``, given its UTF-8 ``data`` and what ``_scan`` found
    of its digits, which :func:`loads` has made already."""
    text = raw if isinstance(raw, str) else raw.decode("utf-8")
    if digits is _Digits.VERY_LONG or _LARGE_EXPONENT.search(data):
        return json.loads(text, parse_constant=_reject_constant, parse_float=_finite, parse_int=_integer)
    return json.loads(text, parse_constant=_reject_constant)


def _finite(digits: str) -> float | None:
    number = float(digits)
    return number if math.isfinite(number) else None


def _integer(digits: str) -> int | None:
    try:
        return int(digits)
    except ValueError:  # more digits than sys.get_int_max_str_digits() converts
        return None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
