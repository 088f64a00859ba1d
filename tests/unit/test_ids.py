"""Response ID validation, URL quoting and ID-list parsing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from archiver.errors import ArchiverError, InvalidResponseId
from archiver.ids import (
    MAX_ID_LENGTH,
    IdLine,
    RejectedLine,
    parse_id_lines,
    response_id_problem,
    response_path,
    validate_response_id,
)

PROVIDER_IDS = [
    "resp_68af4030592c81938ec0a5fbab4a3e9f05438e46b5f69a3b",  # OpenAI
    "resp_0f9b2e3c-1a2b-4c5d-8e9f-0123456789ab",  # DashScope style
    "2f1b8a6e-5c4d-4e3f-9a2b-1c0d9e8f7a6b",  # DeepSeek bare UUID
    "gen-1712345678-AbCdEfGhIjKlMnOpQrSt",  # OpenRouter
    "3c5a7b9d-1e2f-4a6b-8c0d-2e4f6a8b0c1d_us-east-1",  # xAI
    "a",
    "urn:resp:1.2",
    "x" * MAX_ID_LENGTH,
    "...a",
    "a..",
]


@pytest.mark.parametrize("value", PROVIDER_IDS)
def test_valid_ids_are_returned_unchanged(value: str) -> None:
    assert validate_response_id(value) == value
    assert response_id_problem(value) is None


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "empty"),
        ("x" * (MAX_ID_LENGTH + 1), "longer than 256 characters (257)"),
        ("a/b", "character '/' not allowed"),
        ("../etc/passwd", "character '/' not allowed"),
        ("a\\b", "character '\\\\' not allowed"),
        ("resp 1", "character ' ' (space) not allowed"),
        (" resp_1", "character ' ' (space) not allowed"),
        ("resp\t1", "character U+0009 not allowed"),
        ("resp\x001", "character U+0000 not allowed"),
        ("a?b=c", "character '?' not allowed"),
        ("a#b", "character '#' not allowed"),
        ("a%2Fb", "character '%' not allowed"),
        ("it's", 'character "\'" not allowed'),
        ("résp", "character 'é' (U+00E9, not ASCII) not allowed"),
        ("resp\u200b", "character U+200B not allowed"),
        ("ｒｅｓｐ", "character 'ｒ' (U+FF52, not ASCII) not allowed"),
        (".", "'.' is not an ID (only dots: a path traversal)"),
        ("..", "'..' is not an ID (only dots: a path traversal)"),
        ("....", "'....' is not an ID (only dots: a path traversal)"),
    ],
)
def test_invalid_ids_have_specific_reasons(value: str, reason: str) -> None:
    assert response_id_problem(value) == reason
    with pytest.raises(InvalidResponseId) as caught:
        validate_response_id(value)
    assert str(caught.value).endswith(": " + reason)
    assert isinstance(caught.value, ArchiverError)


def test_invalid_id_message_shortens_huge_values() -> None:
    with pytest.raises(InvalidResponseId) as caught:
        validate_response_id("y" * 100_000)
    assert len(str(caught.value)) < 200


def test_non_string_is_rejected() -> None:
    assert response_id_problem(123) == "not a string (number)"
    with pytest.raises(InvalidResponseId):
        validate_response_id(123)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("response_id", "path"),
    [
        ("resp_abc", "responses/resp_abc"),
        ("urn:resp:1", "responses/urn%3Aresp%3A1"),
        ("a/b", "responses/a%2Fb"),
        ("..", "responses/.."),
        ("a b?c#d", "responses/a%20b%3Fc%23d"),
        ("é", "responses/%C3%A9"),
    ],
)
def test_response_path_always_quotes(response_id: str, path: str) -> None:
    assert response_path(response_id) == path


def parse(*lines: str) -> list[IdLine | RejectedLine]:
    return list(parse_id_lines(lines))


def test_plain_ids_with_line_numbers_comments_and_blanks() -> None:
    result = parse(
        "\ufeffresp_1\r\n",
        "\n",
        "   # a comment\n",
        "#resp_2\n",
        "  resp_3  \r\n",
        "\t\n",
        "resp_4",
    )
    assert result == [IdLine(1, "resp_1"), IdLine(5, "resp_3"), IdLine(7, "resp_4")]


def test_bom_only_ignored_on_first_line() -> None:
    assert parse("\ufeff# comment", "\ufeffresp_2") == [
        RejectedLine(2, "invalid response ID: character U+FEFF not allowed", "\ufeffresp_2")
    ]
    assert parse("\ufeff") == []
    assert parse('\ufeff{"id": "resp_1"}') == [IdLine(1, "resp_1")]


def test_rejected_plain_lines_keep_text_and_reason() -> None:
    result = parse("resp_ok", "resp bad", "a/b", "..", "x" * 300)
    assert result[0] == IdLine(1, "resp_ok")
    assert result[1] == RejectedLine(2, "invalid response ID: character ' ' (space) not allowed", "resp bad")
    assert result[2] == RejectedLine(3, "invalid response ID: character '/' not allowed", "a/b")
    assert isinstance(result[3], RejectedLine)
    assert "path traversal" in result[3].reason
    long = result[4]
    assert isinstance(long, RejectedLine)
    assert long.reason == "invalid response ID: longer than 256 characters (300)"
    assert len(long.text) <= 80
    assert long.text.endswith("...")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"id": "resp_1", "model": "qwen-plus"}', "resp_1"),
        ('{"response_id": "resp_2", "level": "info"}', "resp_2"),
        ('{"type": "response.completed", "response": {"id": "resp_3"}}', "resp_3"),
        ('{"id": 42, "response_id": "resp_4"}', "resp_4"),  # a numeric log id is skipped
        ('{"id": null, "response": {"id": "resp_5"}}', "resp_5"),
        ('{"id": "resp_6", "response_id": "resp_other"}', "resp_6"),  # id wins
        ('  {"id": "resp_7"}  \r\n', "resp_7"),
        ('{"id": "resp_\\u0038"}', "resp_8"),
    ],
)
def test_json_lines(line: str, expected: str) -> None:
    assert parse(line) == [IdLine(1, expected)]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("{not json", "not valid JSON: "),
        ('{"id": "resp_1"', "not valid JSON: "),
        ('{"level": "info"}', "JSON object has no string 'id', 'response_id' or 'response.id'"),
        ('{"id": 7}', "JSON object has no string"),
        ('{"response": "resp_1"}', "JSON object has no string"),
        ('{"id": "a/b"}', "field 'id' is not a valid response ID: character '/' not allowed"),
        ('{"response": {"id": ""}}', "field 'response.id' is not a valid response ID: empty"),
        ('["resp_1"]', "JSON array is not an object"),
        ('"resp_1"', "JSON string is not an object (use jq -r for raw IDs)"),
    ],
)
def test_json_lines_rejected(line: str, reason: str) -> None:
    [result] = parse(line)
    assert isinstance(result, RejectedLine)
    assert result.line_no == 1
    assert result.reason.startswith(reason)
    assert result.text == line.strip()


def test_valid_lines_still_come_after_rejected_ones() -> None:
    result = parse("bad id", '{"id": "resp_1"}', "{oops", "resp_2")
    assert [r.line_no for r in result] == [1, 2, 3, 4]
    assert [type(r) for r in result] == [RejectedLine, IdLine, RejectedLine, IdLine]


def test_parse_is_lazy() -> None:
    def lines() -> Iterator[str]:
        yield "resp_1"
        raise AssertionError("read too far")

    iterator = parse_id_lines(lines())
    assert next(iterator) == IdLine(1, "resp_1")


def test_a_million_plain_ids_all_parse() -> None:
    # Speed is measured in bench/, not asserted here; this checks nothing is lost at scale.
    lines = [f"resp_{i:048x}\n" for i in range(1_000_000)]
    parsed = list(parse_id_lines(lines))
    assert len(parsed) == 1_000_000
    assert all(isinstance(p, IdLine) for p in parsed)
    assert parsed[-1] == IdLine(1_000_000, f"resp_{999_999:048x}")
