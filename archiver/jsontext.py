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
from itertools import accumulate
from typing import Any, Final

import orjson

MAX_NESTING: Final = 512
"""The deepest nesting of arrays and objects the archiver parses (see the module docstring)."""
BYTES_PER_CONTAINER: Final = 8
"""A body may hold one array or object per this many of its bytes, an object counting as
two (see :func:`max_containers`)."""
MIN_CONTAINERS: Final = 65_536
"""However short the body, it may hold this many arrays and objects."""


class NestingTooDeep(ValueError):
    """Valid JSON, maybe, but nested deeper than :data:`MAX_NESTING` levels."""

    def __init__(self, depth: int) -> None:
        super().__init__(f"nests {depth} levels deep, deeper than the {MAX_NESTING} the archiver reads")
        self.depth = depth


class TooManyContainers(ValueError):
    """Valid JSON, maybe, but holding more arrays and objects than :func:`max_containers`."""

    def __init__(self, containers: int, most: int) -> None:
        super().__init__(
            f"holds {containers:,} arrays and objects, more than the {most:,} "
            f"(one per {BYTES_PER_CONTAINER} bytes) the archiver reads, an object counting as two"
        )
        self.containers = containers
        self.most = most


class TooManyStrings(TooManyContainers):
    """Valid JSON, maybe, but holding more strings than :func:`max_containers` (see
    :func:`string_counts`)."""

    def __init__(self, values: int, names: int, most: int) -> None:
        names_text = f" and {names:,} member names of many spellings (counting two)" if names else ""
        ValueError.__init__(
            self,
            f"holds {values:,} string values{names_text}, more than the {most:,} "
            f"(one per {BYTES_PER_CONTAINER} bytes) the archiver reads",
        )
        self.containers = values + 2 * names
        self.most = most


class TooMuchTogether(TooManyContainers):
    """Valid JSON, maybe, under each limit of :func:`max_containers` on its own, but holding
    more arrays, objects, strings and numbers together (see :func:`parse_weight`)."""

    def __init__(self, containers: int, objects: int, strings: int, numbers: int, most: int) -> None:
        ValueError.__init__(
            self,
            f"holds {containers:,} arrays and objects, {strings:,} strings and {numbers:,} "
            f"numbers, together more than the {most:,} (one per {BYTES_PER_CONTAINER * 2 // 3} bytes) "
            "the archiver reads, an object counting three, a member name of many spellings two, a "
            f"number half (numbers alone: one per {BYTES_PER_CONTAINER // 2} bytes)",
        )
        self.containers = parse_weight(containers, objects, strings, numbers)
        self.most = most


def max_containers(size: int) -> int:
    """The arrays and objects a JSON text of ``size`` bytes may hold: one per
    :data:`BYTES_PER_CONTAINER` bytes, at least :data:`MIN_CONTAINERS`.

    Parsed, an empty array or object takes ~70 bytes for the 3 of ``[],``: 16 MiB of them
    would be 5.6 million objects, ~390 MB beyond the bytes the settings bound. At one per
    8 bytes the parse of a body stays under ~9 times its size (real Responses hold one
    per 80 bytes or more; dense logprobs one per ~25). An object counts as two: a dict
    takes about four times a list's memory, and 16 MiB of ``{"a":0},`` (one per 8 bytes)
    made ``archiver run --once`` peak at 614 MiB, past README's 512 MiB.
    """
    return max(MIN_CONTAINERS, size // BYTES_PER_CONTAINER)


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


# The scan before every parse: digits as "0", "[" and "{" as "(", ".", "-" and "e" (or
# "E") as themselves, every other byte as a space. A run of 19 zeros in it is a run of 19
# digits in the text: the shortest integer orjson rounds, -9223372036854775809, has 19 (a
# 19-digit run in a string or a fraction only costs the slower parse). Text with at most
# MAX_NESTING opening brackets cannot nest deeper, so only text with more pays for
# nesting_depth. The rest finds numbers (see costly_numbers).
def _scan_byte(byte: int) -> int:
    if 0x30 <= byte <= 0x39:
        return 0x30
    if byte in b"[{":
        return 0x28
    if byte in b".-eE":
        return byte | 0x20  # "E" as "e"
    return 0x20


_SCAN: Final = bytes(_scan_byte(byte) for byte in range(256))
_OPENING: Final = b"("
_LONG_DIGIT_RUN: Final = b"0" * 19
# A number no double holds has 200 digits in a row or an exponent of 100 or more (1e99
# times 200 digits stays below 1.8e308); either sends the parse through _finite/_integer.
_VERY_LONG_DIGIT_RUN: Final = b"0" * 200
_LARGE_EXPONENT: Final = re.compile(rb"[eE]\+?0*[1-9][0-9]{2}")


def loads(raw: bytes | str) -> Any:
    """Parse JSON as the fetcher accepts it, exactly: orjson, or :func:`loads_stdlib` for
    valid JSON that orjson refuses or would read inexactly (an integer beyond 64 bits).

    A scan of the bytes picks the parse and bounds the nesting (``_SCAN``); it costs about
    a third of orjson's parse.

    Raises:
        ValueError: not JSON (``orjson.JSONDecodeError`` and ``UnicodeDecodeError`` are
            ValueErrors); :class:`NestingTooDeep` past :data:`MAX_NESTING` and
            :class:`TooManyContainers` past :func:`max_containers` (ValueErrors too).
    """
    return _loads(raw, limited=True)


def loads_stored(raw: bytes | str) -> Any:
    """:func:`loads` without its limits, for JSON columns read back: the archiver wrote
    them, and rows written before the limits may nest deeper (the export must still read
    them)."""
    return _loads(raw, limited=False)


def _loads(raw: bytes | str, *, limited: bool) -> Any:
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    digits = _scan(data, limited=limited)
    if digits is not _Digits.SHORT:
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
    scan = data.translate(_SCAN)
    if limited:
        _check_limits(data, scan)
    if _LONG_DIGIT_RUN not in scan:
        return _Digits.SHORT
    return _Digits.VERY_LONG if _VERY_LONG_DIGIT_RUN in scan else _Digits.LONG


def _check_limits(data: bytes, scan: bytes) -> None:
    """Refuse text nested past MAX_NESTING, or holding more than :func:`max_containers` of
    arrays and objects, of strings, or of all they weigh together (:func:`parse_weight`).

    Cheap counts first: brackets in strings count, and every one may be an object's
    (counting two); every pair of quotes may be a string value and every ``:`` a member
    name (counting two). Only a body that could be past a limit pays for exact counts.
    """
    openings, most = scan.count(_OPENING), max_containers(len(data))
    numbers = costly_numbers(scan)
    shape: tuple[int, int, int] | None = None
    if openings > MAX_NESTING or 2 * openings > most:
        shape = json_shape(data)
        if shape[0] > MAX_NESTING:
            raise NestingTooDeep(shape[0])
        if shape[1] + shape[2] > most:
            raise TooManyContainers(shape[1] + shape[2], most)
    weighs = 3 * openings if shape is None else shape[1] + 2 * shape[2]  # at most
    strings = data.count(b'"') // 2 + data.count(b":")
    if strings <= most and numbers // 2 <= most and weighs + strings + numbers // 2 <= most * 3 // 2:
        return
    values, names = string_counts(data)
    if shape is None:
        shape = json_shape(data)
    _refuse_past_limits(most, shape[1], shape[2], values, names, numbers)


def _refuse_past_limits(
    most: int, containers: int, objects: int, values: int, names: int, numbers: int
) -> None:
    """Raise for exact counts past the limits of a text whose :func:`max_containers` is ``most``."""
    if containers + objects > most:
        raise TooManyContainers(containers + objects, most)
    if values + 2 * names > most:
        raise TooManyStrings(values, names, most)
    strings = values + 2 * names
    if numbers // 2 > most or parse_weight(containers, objects, strings, numbers) > most * 3 // 2:
        raise TooMuchTogether(containers, objects, strings, numbers, most * 3 // 2)


class Tally:
    """The limits of :func:`loads` over several JSON texts parsed and kept together, as if
    they were one text of their summed size: the input-item pages of one response.

    Each page on its own may hold what :func:`max_containers` allows, at least 65,536 of
    each kind whatever its size: 85 pages of 195 KB, each 65,000 ``[],``, kept parsed
    for one response until the writer took them, peaked at 986 MiB. Counted together,
    the floor applies once.
    """

    def __init__(self) -> None:
        self.size = self.containers = self.objects = self.values = self.names = self.numbers = 0

    def add(self, data: bytes) -> None:
        """Count ``data`` in (exactly: every text pays for the counts).

        Raises:
            TooManyContainers: all texts counted so far are past a limit (or a subclass:
                :class:`TooManyStrings`, :class:`TooMuchTogether`).
        """
        _, containers, objects = json_shape(data)
        values, names = string_counts(data)
        self.size += len(data)
        self.containers += containers
        self.objects += objects
        self.values += values
        self.names += names
        self.numbers += costly_numbers(data.translate(_SCAN))
        most = max_containers(self.size)
        _refuse_past_limits(most, self.containers, self.objects, self.values, self.names, self.numbers)

    @property
    def weight(self) -> int:
        """:func:`parse_weight` of everything counted so far."""
        return parse_weight(self.containers, self.objects, self.values + 2 * self.names, self.numbers)


PARSED_BYTES_PER_WEIGHT: Final = 96
"""About the most a unit of :func:`parse_weight` takes parsed, in bytes: an array ~64-80,
a string ~58, an object (two) ~190, a number (half) 32-36."""


def parse_weight(containers: int, objects: int, strings: int, numbers: int) -> int:
    """What a JSON text weighs parsed, in arrays: ``containers`` arrays and objects, of
    which ``objects`` objects, each counting three; ``strings`` (values, and member names of
    many spellings counting two: see :func:`string_counts`); ``numbers`` (see
    :func:`costly_numbers`), each counting half.

    Each limit on its own let a body hold as many of each kind as the limit allows, and
    numbers without limit: 16 MiB of ``["a",1.5],`` (an array, a string and a float per
    10 bytes) parsed at ~18 times its size, three at once took ``archiver run --once`` to
    609 MiB, and ``-9,`` (an integer CPython does not keep once: 36 bytes for 3 of text)
    parsed at ~13 times its size. A parsed array or string costs ~60-80 bytes, an object
    of 1-5 members ~190 (``{"t":"s","u":0}, ``, counting two, parsed at ~15 times its
    size: three at once, 568-753 MiB), a number 32-36. So numbers may weigh as much as
    each other kind on its own (one per 4 bytes), and all kinds together half as much
    again (one per 5 1/3 bytes): the densest real bodies of the tests (logprobs of
    one-character tokens with 20 top_logprobs; tool listings of a property per 22 bytes)
    are read.
    """
    return containers + 2 * objects + strings + numbers // 2


# Numbers the parse makes an object for, in the scan: a fraction or an exponent after a
# digit, a negative number (once, with its fraction), a run of 3 digits or more.
_NUMBER_MARKS: Final = (b"0.", b"0e", b"-0", b" 000", b"(000")
_NEGATIVE_FRACTION: Final = b"-0."


def costly_numbers(scan: bytes) -> int:
    """How many numbers of a text (translated by ``_SCAN``) the parse makes an object for,
    about: floats, and integers CPython does not keep once (-5 to 256 it does), found
    without telling strings from numbers (digits in strings count too; a float of many
    digits may count twice).
    """
    found = sum(scan.count(mark) for mark in _NUMBER_MARKS)
    return found - scan.count(_NEGATIVE_FRACTION)


def _parse_stdlib(raw: bytes | str, data: bytes, digits: _Digits) -> Any:
    """:func:`loads_stdlib` of ``raw``, given its UTF-8 ``data`` and what ``_scan`` found
    of its digits, which :func:`loads` has made already."""
    text = raw if isinstance(raw, str) else raw.decode("utf-8")
    if digits is _Digits.VERY_LONG or _LARGE_EXPONENT.search(data):
        return json.loads(text, parse_constant=_reject_constant, parse_float=_finite, parse_int=_integer)
    return json.loads(text, parse_constant=_reject_constant)


# What decides nesting: quotes and brackets, once every escaped backslash and escaped
# quote is gone (an escaped backslash first: a run of them pairs off from its start).
_NOT_MARKS: Final = bytes(byte for byte in range(256) if byte not in b'"[]{}')
_ESCAPED_BACKSLASH: Final = b"\\\\"
_ESCAPED_QUOTE: Final = b'\\"'
_EMPTY_STRING: Final = b'""'
# An opening bracket as +1 and a closing one as -1, as signed bytes.
_BRACKET_STEPS: Final = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_WINDOW: Final = 1 << 16
"""Marks split at quotes at a time: the pieces of a split cost ~40 bytes each."""


def nesting_depth(data: bytes) -> int:
    """How deep arrays and objects nest in the JSON text ``data`` (see :func:`json_shape`)."""
    return json_shape(data)[0]


def json_shape(data: bytes) -> tuple[int, int, int]:
    """How deep arrays and objects nest in the JSON text ``data``, how many arrays and
    objects there are, and how many of them are objects, found without recursion
    (brackets inside strings do not count). For text that is not JSON the figures are a
    guess, which the parse after it refuses anyway.

    Every step is a pass of bytes methods (no regular expression, whose backtracking and
    per-match lists a hostile body can make quadratic or ~45 times its size): memory is
    two copies of ``data`` at most, plus a window's split; time is linear.
    """
    marks = data.replace(_ESCAPED_BACKSLASH, b"").replace(_ESCAPED_QUOTE, b"")
    # Two quotes in a row close a string and open the next (or are an empty one):
    # dropping them leaves every bracket as much inside or outside a string as it was.
    marks = marks.translate(None, _NOT_MARKS).replace(_EMPTY_STRING, b"")
    depth = deepest = containers = objects = 0
    in_string = False
    for start in range(0, len(marks), _WINDOW):
        pieces = marks[start : start + _WINDOW].split(b'"')
        outside = b"".join(pieces[1 if in_string else 0 :: 2])
        objects += outside.count(b"{")
        outside = outside.translate(_BRACKET_STEPS)
        in_string ^= len(pieces) % 2 == 0
        opening, closing = outside.count(1), outside.count(255)
        if depth + opening > deepest:  # this window may reach deeper
            if closing == 0:  # only opening brackets: it reaches depth + opening
                deepest = depth + opening
            else:
                deepest = max(deepest, max(accumulate(memoryview(outside).cast("b"), initial=depth)))
        depth += opening - closing
        containers += opening
    return deepest, containers, objects


KEPT_NAMES: Final = 256
"""Member names :func:`string_counts` takes to be kept once by the parse: at most this
many spellings, the most frequent in its sample (orjson's cache of names holds 2,048)."""
_NAME_SAMPLES: Final = 16
_NAME_SAMPLE_BYTES: Final = 1 << 13


def string_counts(data: bytes) -> tuple[int, int]:
    """How many strings of the JSON text ``data`` are values, and how many are member names
    the parse makes a new object for: ``(values, names)``.

    Parsed, a string value is a Python object of ~50 bytes plus its slot, for as little as
    4 bytes of text (``"a",``): 16 MiB of them took ``archiver run`` past README's memory
    bound. A member name costs that and its dict entry, unless orjson keeps it once: its
    cache holds the last name of each of 2,048 hash buckets, so names of a few spellings,
    repeated (real bodies name a member every ~25 bytes, from a few hundred spellings), are
    nearly free, while 16 MiB of one-off names (``"1a2b3":0,``) took each process that
    parsed it 17 times the body's size. So the names counted are those not among the
    :data:`KEPT_NAMES` spellings seen most often in samples spread over the text: each
    of those is counted in the whole text, and every other name counts. A name is a
    string followed by ``:``; for text that is not JSON the figures are a guess, which
    the parse refuses anyway.
    """
    stripped = data.replace(_ESCAPED_BACKSLASH, b"").replace(_ESCAPED_QUOTE, b"")
    if _SPACE_BEFORE_COLON.search(stripped):  # valid JSON: '"a" :0'
        stripped = _without_space_before_colons(stripped)
    names = stripped.count(b'":')
    values = max(stripped.count(b'"') // 2 - names, 0)
    if names == 0:
        return values, 0
    return values, max(names - _count_names(stripped, set(_frequent_names(stripped))), 0)


_SPACE_BEFORE_COLON: Final = re.compile(rb'"[ \t\r\n]+:')
_NAME: Final = re.compile(rb'"([^"]*)":')
_WHITESPACE_AS_SPACE: Final = bytes.maketrans(b"\t\r\n", b"   ")


def _without_space_before_colons(stripped: bytes) -> bytes:
    """``stripped`` with every run of whitespace one space, and none between a quote and a
    colon. Bytes methods only: ``re.sub`` keeps a piece per match until it joins them
    (1.5 million names spaced from their colon: ~500 MiB)."""
    text = stripped.translate(_WHITESPACE_AS_SPACE)
    while b"  " in text:  # each pass halves every run
        text = text.replace(b"  ", b" ")
    return text.replace(b'" :', b'":')


def _count_names(stripped: bytes, spellings: set[bytes]) -> int:
    """How many member names of ``stripped`` (a JSON text without escaped quotes, nor space
    before a colon) are among ``spellings``: one pass, a window at a time, each ending
    after a name. A ``bytes.count`` per spelling took 4.3 s for 16 MiB of 300 short
    spellings (``"123":0,``); this, 0.3 s."""
    if not spellings:
        return 0
    found = start = 0
    while start < len(stripped):
        end = stripped.find(b'":', start + _WINDOW)
        end = len(stripped) if end < 0 else end + 2
        found += sum(map(spellings.__contains__, _NAME.findall(stripped, start, end)))
        start = end
    return found


def _frequent_names(stripped: bytes) -> list[bytes]:
    """The member names seen more than once in samples spread over ``stripped`` (a JSON
    text without escaped quotes), most frequent first, at most :data:`KEPT_NAMES`."""
    seen: dict[bytes, int] = {}
    step = max(len(stripped) // _NAME_SAMPLES, _NAME_SAMPLE_BYTES)
    for start in range(0, len(stripped), step):
        window = stripped[start : start + _NAME_SAMPLE_BYTES]
        pieces = window.split(b'":')  # each piece but the last ends with a name
        for piece in pieces[1:-1] if start else pieces[:-1]:  # a window's first may be cut
            name = piece[piece.rfind(b'"') + 1 :]
            seen[name] = seen.get(name, 0) + 1
    frequent = sorted((count, name) for name, count in seen.items() if count > 1)
    return [name for _, name in reversed(frequent[-KEPT_NAMES:])]


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
