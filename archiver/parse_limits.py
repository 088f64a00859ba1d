"""How much a JSON text may hold, counted before it is parsed: the limits of :func:`archiver.jsontext.loads`.

A body may nest at most :data:`MAX_NESTING` levels, and hold one array or object per
:data:`BYTES_PER_CONTAINER` bytes, one string per as many, one costly number per half as
many, and all of them together weigh (:func:`parse_weight`) one per 5 1/3 bytes (each
at least :data:`MIN_CONTAINERS`): parsed, each is a Python object of tens of bytes for a
few bytes of text, and the memory bound README states holds only if the parse stays
within about a dozen times the body. :class:`Tally` holds several texts kept parsed
together (the input-item pages of one response) to the limits of one. Every count is a
pass of bytes methods (no recursion, no per-match lists past a window).
"""

from __future__ import annotations

import re
from itertools import accumulate
from typing import Final

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


SCAN: Final = bytes(_scan_byte(byte) for byte in range(256))
_OPENING: Final = b"("


def check_limits(data: bytes, scan: bytes) -> None:
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
        self.numbers += costly_numbers(data.translate(SCAN))
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
    """How many numbers of a text (translated by :data:`SCAN`) the parse makes an object for,
    about: floats, and integers CPython does not keep once (-5 to 256 it does), found
    without telling strings from numbers (digits in strings count too; a float of many
    digits may count twice).
    """
    found = sum(scan.count(mark) for mark in _NUMBER_MARKS)
    return found - scan.count(_NEGATIVE_FRACTION)


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
