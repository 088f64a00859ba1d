"""The body of POST /v1/enqueue: a JSON array or NDJSON, validated as `archiver enqueue` validates lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from archiver.errors import ConfigError
from archiver.ingest_http import BodyError, load_ingest_secrets, parse_enqueue_body
from archiver.settings import Settings


def ids_and_rejects(body: bytes) -> tuple[list[tuple[int, str, float | None]], list[tuple[int, str]]]:
    accepted, rejected = parse_enqueue_body(body)
    return [(a.line_no, a.response_id, a.created_at) for a in accepted], [
        (r.line_no, r.reason) for r in rejected
    ]


def test_a_json_array_of_ids_and_objects() -> None:
    body = (
        b'["resp_a", {"id": "resp_b", "created_at": 1764590400},'
        b' {"response_id": "resp_c", "source": "default"},'
        b' {"id": "resp_d", "source": "elsewhere"}, "bad/id", 7, {"id": ""}, "  resp_e"]'
    )
    accepted, rejected = ids_and_rejects(body)
    assert accepted == [(1, "resp_a", None), (2, "resp_b", 1764590400.0), (3, "resp_c", None)]
    assert rejected == [
        (4, "unknown source 'elsewhere'"),
        (5, "invalid response ID: character '/' not allowed"),
        (6, "JSON number is not an ID or an object"),
        (7, "field 'id' is not a valid response ID: empty"),
        (8, "invalid response ID: character ' ' (space) not allowed"),
    ]


def test_ndjson_lines_are_read_like_an_id_file() -> None:
    body = (
        b"resp_a\r\n"
        b'{"id": "resp_b", "created_at": "2025-12-01T12:00:00Z"}\n'
        b"\n"
        b"# a comment\n"
        b'{"id": "resp_c", "source": 3}\n'
        b"not an id!\n"
        b'{"id": "resp_d"'
    )
    accepted, rejected = ids_and_rejects(body)
    assert accepted == [(1, "resp_a", None), (2, "resp_b", 1764590400.0)]
    assert [r[0] for r in rejected] == [5, 6, 7]
    assert rejected[0][1] == "unknown source (number)"
    assert rejected[1][1].startswith("invalid response ID")
    assert rejected[2][1].startswith("not valid JSON")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\xff\xfe", "not UTF-8"),
        (b'["resp_a", ', "not a JSON array"),
    ],
)
def test_a_body_that_is_not_text_or_not_an_array_is_an_error(body: bytes, message: str) -> None:
    with pytest.raises(BodyError, match=message):
        parse_enqueue_body(body)


def test_an_empty_body_holds_nothing() -> None:
    assert parse_enqueue_body(b"") == ([], [])
    assert parse_enqueue_body(b"[]") == ([], [])


# --- secret files at start -------------------------------------------------------------------


def test_missing_unreadable_and_empty_files_are_config_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    cases = {
        str(tmp_path / "missing"): "not found",
        str(tmp_path): "cannot read",  # a directory
        str(empty): "is empty",
    }
    for path, message in cases.items():
        for field in ("ingest_token_file", "webhook_secret_file"):
            with pytest.raises(ConfigError, match=message):
                load_ingest_secrets(Settings(metrics_port=0, **{field: path}))


def test_a_secret_file_needs_the_metrics_listener(tmp_path: Path) -> None:
    token = tmp_path / "token"
    canary = "tok-unit-canary-0123456789"
    token.write_text(canary + "\n")
    with pytest.raises(ConfigError, match="--metrics-port"):
        load_ingest_secrets(Settings(ingest_token_file=str(token)))
    secrets = load_ingest_secrets(Settings(ingest_token_file=str(token), metrics_port=0))
    assert secrets.token == canary and secrets.webhook_key is None
    assert "tok-unit" not in repr(secrets)


def test_a_webhook_secret_that_is_not_base64_is_a_config_error(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("whsec_%%%%not-base64-canary%%%%\n")
    with pytest.raises(ConfigError, match="not base64") as caught:
        load_ingest_secrets(Settings(webhook_secret_file=str(secret), metrics_port=0))
    assert "canary" not in str(caught.value)


def test_sources_not_served_are_rejected() -> None:
    body = b'["resp_a", {"id": "resp_b", "source": "proj-a"}, {"id": "resp_c", "source": "zz"}]'
    accepted, rejected = parse_enqueue_body(body, frozenset({"proj-a"}))
    assert [(line.response_id, line.source) for line in accepted] == [("resp_b", "proj-a")]
    assert [(r.line_no, r.reason.split(",")[0]) for r in rejected] == [
        (1, "no source given"),
        (3, "unknown source 'zz'"),
    ]
