"""archiver.jsontext: one JSON encoder and parser for what orjson refuses."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from archiver import jsontext, parse_limits
from archiver.jsontext import (
    MAX_NESTING,
    MIN_CONTAINERS,
    NestingTooDeep,
    TooManyContainers,
    TooManyStrings,
    json_bytes,
    json_shape,
    json_text,
    loads,
    loads_stdlib,
    loads_stored,
    max_containers,
    nesting_depth,
    string_counts,
)
from archiver.normalize import item_digest


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    "value",
    [{"b": 1, "a": [1.5, "x"]}, nested(300), 2**70],
    ids=["plain", "300 deep", "beyond 64 bits"],
)
def test_what_orjson_refuses_is_written_and_parsed_back(value: Any) -> None:
    data = json_bytes(value, sort_keys=True)
    assert loads(data) == value
    assert json_text(value, sort_keys=True) == data.decode()
    assert len(item_digest(value)) == 64


def test_a_lone_surrogate_is_parsed_from_its_escape_and_kept_in_text_and_digests() -> None:
    value = loads(b'{"name":"\\ud83d"}')
    assert value == {"name": "\ud83d"}
    assert json_text(value) == '{"name":"\ud83d"}'
    assert json_bytes(value) == json_text(value).encode("utf-8", "surrogatepass")
    assert item_digest(value) != item_digest({"name": "\ufffd"})


def test_keys_are_sorted_only_when_asked_and_orjson_writes_what_it_can() -> None:
    assert json_bytes({"b": 1, "a": 2}) == orjson.dumps({"b": 1, "a": 2}) == b'{"b":1,"a":2}'
    assert json_bytes({"b": 1, "a": 2}, sort_keys=True) == b'{"a":2,"b":1}'
    # The fallback writes the same compact form.
    assert json_bytes([{"b": 2**70, "a": 1}], sort_keys=True) == b'[{"a":1,"b":1180591620717411303424}]'


def test_the_parse_refuses_what_is_not_json() -> None:
    for raw in (b"NaN", b'{"a": Infinity}', b"{", b"\xff"):
        with pytest.raises(ValueError):
            loads(raw)
    with pytest.raises(ValueError):
        loads_stdlib(b"-Infinity")


@pytest.mark.parametrize(
    "text",
    [
        "123456789012345678901234567890",
        "-9223372036854775809",
        "18446744073709551616",
        '{"a":[1.5,99999999999999999999,{"b":-123456789012345678901}]}',
        '{"digits in a string":"12345678901234567890123","n":1}',
    ],
)
def test_integers_beyond_64_bits_are_read_exactly_from_bytes_and_text(text: str) -> None:
    """orjson reads them as the nearest double without an error; the parse must not."""
    expected = json.loads(text)
    for raw in (text.encode(), text):
        value = loads(raw)
        assert value == expected
        assert json_bytes(value) == json_bytes(expected)  # the same digits, not a double's


def test_orjson_still_rounds_what_loads_keeps() -> None:
    """The reason for the scan: if orjson ever reads these exactly, the scan can go."""
    assert type(orjson.loads(b"18446744073709551616")) is float
    assert type(loads(b"18446744073709551616")) is int


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[1e400,-2E+999,1e308,1e-400]", [None, None, 1e308, 0.0]),
        ("[1" + "0" * 400 + ".5,12345678901234567890123]", [None, 12345678901234567890123]),
        ("[" + "1" * 250 + "e99,1" + "0" * 250 + "]", [None, int("1" + "0" * 250)]),
        ("[-" + "7" * 5000 + ",1]", [None, 1]),  # past CPython's 4,300 digits: no ValueError
    ],
)
def test_a_number_no_double_holds_is_none_and_written_as_null(text: str, expected: list[Any]) -> None:
    for raw in (text.encode(), text):
        value = loads(raw)
        assert value == expected
        json.loads(json_bytes(value))  # JSON: never Infinity, also when orjson cannot write it
        json.loads(json_bytes([value, 2**70, [[[[]]]]]))


def test_a_deep_value_is_written_the_same_from_deep_in_the_stack() -> None:
    """renormalize writes values from deeper in the stack than the fetcher parsed them."""
    value = loads("[" * 510 + '{"b":[1,2.5,null,true],"a":"\\ud83d \\u00e9","c":{}}' + "]" * 510)
    expected = json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)

    def from_depth(n: int) -> bytes:
        return json_bytes(value, sort_keys=True) if n == 0 else from_depth(n - 1)

    assert from_depth(450) == expected.encode("utf-8", "surrogatepass")


def test_nesting_depth_counts_brackets_outside_strings_only() -> None:
    text = b'[" [[[ \\" [[ \\\\", {"a": "]]] {{", "b": [[{}]]}, [[]], "\\\\"]'
    assert nesting_depth(text) == 5 == _depth(json.loads(text))
    assert nesting_depth(b"1") == nesting_depth(b'"[[["') == 0


@pytest.mark.parametrize("window", [1, 2, 3, 7, 1 << 16])
def test_nesting_depth_reads_strings_across_its_windows(window: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The marks are split at quotes a window at a time: a string may straddle windows."""
    monkeypatch.setattr(parse_limits, "_WINDOW", window)  # where json_shape looks it up
    for text in (
        b'[" [[[ \\" [[ \\\\", {"a": "]]] {{", "b": [[{}]]}, [[]], "\\\\"]',
        b'[["",""],"[","\\\\\\"[",[[["]"]]],{"":{"\\\\":[]}}]',
        b'{"a":"' + b"[" * 40 + b'","b":[[[[[[]]]]]],"c":"\\"\\\\\\"]"}',
    ):
        assert nesting_depth(text) == _depth(json.loads(text)), text


def test_nesting_depth_of_text_that_is_not_json_is_a_bounded_guess() -> None:
    """An unterminated string hides what follows it; a lone backslash ends nothing."""
    assert nesting_depth(b'[[["abc') == 3
    assert nesting_depth(b'[["\\" [[[[') == 2
    assert nesting_depth(b'[[\\"[') == 3
    assert nesting_depth(b"]]]") == 0


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


@pytest.mark.parametrize("core", [b"1", b"123456789012345678901234567890", b'"\\ud83d"'])
def test_the_archiver_reads_512_levels_from_anywhere_in_the_stack_and_no_more(core: bytes) -> None:
    """Found: how deep a body could nest depended on how deep in the stack it was parsed
    (orjson reads 1,024 levels, the standard library what the stack leaves), so renormalize
    failed bodies the fetcher had archived. The core picks the parse: orjson, or the
    standard library for an integer past 64 bits or a lone surrogate."""
    deepest = b"[" * MAX_NESTING + core + b"]" * MAX_NESTING

    def from_depth(n: int, text: bytes) -> Any:
        return loads(text) if n == 0 else from_depth(n - 1, text)

    value = from_depth(400, deepest)
    assert nesting_depth(json_bytes(value)) == MAX_NESTING
    for parse in (loads, loads_stdlib):
        with pytest.raises(NestingTooDeep, match=f"nests {MAX_NESTING + 1} levels deep") as caught:
            parse(b"[" + deepest + b"]")
        assert isinstance(caught.value, ValueError) and caught.value.depth == MAX_NESTING + 1
    assert loads(b'["' + b"[" * 5000 + b'"]') == ["[" * 5000]  # brackets in a string do not nest


def test_a_body_may_hold_one_array_or_object_per_8_bytes() -> None:
    """Parsed, ``[],`` takes ~70 bytes for 3: a body of them would hold memory ~25 times
    its size, past what the settings bound (test_hostile_nesting measures the run)."""
    dense = b"[" + b"[]," * 100_000 + b"0]"  # 300 KB: the floor of 65,536 applies
    with pytest.raises(TooManyContainers, match="holds 100,001 arrays and objects, more than the 65,536"):
        loads(dense)
    assert max_containers(len(dense)) == MIN_CONTAINERS
    assert max_containers(8 << 20) == 1 << 20
    many = b"[" + b'[],"xxxxxxxx",' * 100_000 + b"0]"  # one per 14 bytes: read
    assert len(loads(many)) == 200_001
    # Brackets in strings are not arrays: a string of 1 MB of them is read.
    assert loads(b'["' + b"[{" * 500_000 + b'"]') == ["[{" * 500_000]
    assert json_shape(b'[[],{"a":"[[["},[1,[2]]]') == (3, 5, 1)
    # An object counts as two (a dict takes ~4 times a list): one per 8 bytes is refused.
    objects = b"[" + b'{"a":0},' * 50_000 + b"0]"
    with pytest.raises(TooManyContainers, match="holds 100,001 arrays and objects, more than the 65,536"):
        loads(objects)
    assert loads_stored(dense)[0] == []  # JSON columns read back are not limited


def test_jsonb_text_keeps_large_floats_floats_and_strings_as_they_are() -> None:
    value = {"f": 1.5e20, "n": [-1e16, 1e-7, 12.0, 7], "s": 'say "1e+5" \\ 2e+9', "1e+3": 1e300}
    text_ = jsontext.jsonb_text(value)
    assert text_.startswith('{"f":150000000000000000000.0,"n":[-10000000000000000.0,1e-7,12.0,7],')
    assert '"s":"say \\"1e+5\\" \\\\ 2e+9"' in text_ and '"1e+3":1' + "0" * 300 + ".0}" in text_
    parsed = json.loads(text_)
    assert parsed == value and type(parsed["f"]) is float and type(parsed["1e+3"]) is float
    assert jsontext.jsonb_text({"s": "no exponent"}) == '{"s":"no exponent"}'


def test_member_names_of_many_spellings_count_twice_and_repeated_ones_not_at_all() -> None:
    """A parsed member name is a new string object and a dict entry (~150 bytes), unless
    orjson keeps its spelling once: 16 MiB of one-off names took each process 17 times the
    body's size. Names of a few spellings, however many times repeated, are not counted."""
    one_off = b"{" + b"".join(b'"%x":0,' % i for i in range(40_000)) + b'"z":0}'  # 318 KB
    assert string_counts(one_off) == (0, 40_001)
    with pytest.raises(TooManyStrings, match="0 string values and 40,001 member names of many spellings"):
        loads(one_off)
    values = b"[" + b"".join(b'"%x",' % i for i in range(40_000)) + b'"z"]'  # the same as values: read
    assert string_counts(values) == (40_001, 0)
    assert len(loads(values)) == 40_001
    # Logprobs: four spellings, 4 names and a value per ~50 bytes, far past the limit's
    # count if names counted; none does (the two top-level names each appear once).
    entry = b'{"token":"a","logprob":-0.5,"bytes":[97],"top_logprobs":[]},'
    repeated = b'{"id":"r","x":[' + entry * 40_000 + b"0]}"
    assert string_counts(repeated) == (40_001, 2)
    assert len(loads(repeated)["x"]) == 40_001
    # 300 spellings repeated: the 256 most frequent in the samples are kept, the rest count.
    spellings = b"{" + b"".join(b'"k%03d":0,' % i for i in range(300)) + b'"z":0},'
    values_, names = string_counts(b"[" + spellings * 200 + b"0]")
    assert values_ == 0 and 44 * 200 <= names <= 45 * 200, names
    # Escaped quotes and backslashes are not strings, and a value holding ":" is no name
    # (each name here is seen once: both count).
    assert string_counts(b'{"a\\"b":"x\\\\","c":"d\\":e"}') == (2, 2)
