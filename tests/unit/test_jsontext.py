"""archiver.jsontext: one JSON encoder and parser for what orjson refuses."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from archiver.jsontext import json_bytes, json_text, loads, loads_stdlib
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
    value = loads("[" * 900 + '{"b":[1,2.5,null,true],"a":"\\ud83d \\u00e9","c":{}}' + "]" * 900)
    expected = json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)

    def from_depth(n: int) -> bytes:
        return json_bytes(value, sort_keys=True) if n == 0 else from_depth(n - 1)

    assert from_depth(300) == expected.encode("utf-8", "surrogatepass")
