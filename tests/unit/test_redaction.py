"""The one redaction point: registered secrets are masked by value, in every form."""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
import urllib.parse

import pytest

from archiver.dburl import redact_url
from archiver.outcomes import Archived, Permanent, Retry, StopAll
from archiver.redaction import (
    contains_secret,
    database_passwords,
    redact,
    redact_bytes,
    redact_secrets,
    redact_value,
    register_database_url,
    register_secret,
    registered_variants,
    scrub_outcome,
    secret_variants,
)

# Unique to this module: registering them masks them in every later test of the session.
CANARIES = [
    "Zx9unitPLAINkey7783",
    "fw_3ZunitFireworks99",
    "hf_unitHuggingFace7788",
    "nvapi-unitNvidia-7788xyz",
    "r8_unitReplicate7788",
    "sk-unit+with/slash+plus7788",
    "Unit\u00e9K\u00e9y-\u00fc77/88",  # non-ASCII: JSON escapes it as \\u00e9
    # No known shape, and URL-quoted its first 15 characters are over half of that form:
    # masking the cut-off quoted form first once left "+pW4xLm8eRt5" of the key readable.
    "Zq9-unitcy/7Hk2+pW4xLm8eRt5",
]


@pytest.fixture(autouse=True, scope="module")
def _registered() -> None:
    for key in CANARIES:
        register_secret(key)


def encodings(key: str) -> dict[str, str]:
    """The forms a server may echo a key in, computed here independently of the module."""
    raw = key.encode()
    return {
        "raw": key,
        "quote": urllib.parse.quote(key, safe=""),
        "quote_path": urllib.parse.quote(key),
        "quote_plus": urllib.parse.quote_plus(key),
        "json": json.dumps(key)[1:-1],
        "json_unicode": json.dumps(key, ensure_ascii=False)[1:-1],
        "json_slash": json.dumps(key)[1:-1].replace("/", "\\/"),
        "b64": base64.b64encode(raw).decode(),
        "b64_nopad": base64.b64encode(raw).decode().rstrip("="),
        "b64url": base64.urlsafe_b64encode(raw).decode(),
        "b64url_nopad": base64.urlsafe_b64encode(raw).decode().rstrip("="),
        # Every character encoded: no encoder does it, an echoing server may.
        "percent_all": "".join(f"%{byte:02X}" for byte in raw),
        "percent_all_lower": "".join(f"%{byte:02x}" for byte in raw),
        "json_escape_all": "".join(f"\\u{ord(c):04x}" for c in key),
        "json_escape_all_upper": "".join(f"\\u{ord(c):04X}" for c in key),
    }


def decodable_key_bytes(text: str, key: str, window: int = 8) -> list[bytes]:
    """Runs of ``window`` key bytes that can be recovered by base64-decoding what is left of ``text``."""
    raw = key.encode()
    pieces = {raw[i : i + window] for i in range(len(raw) - window + 1)}
    found = []
    for run in re.findall(r"[A-Za-z0-9+/_\-]{8,}", text):
        for shift in range(4):
            chunk = run[shift:]
            chunk = chunk[: len(chunk) // 4 * 4]
            for alphabet in (None, b"-_"):
                try:
                    decoded = base64.b64decode(chunk, altchars=alphabet)
                except (binascii.Error, ValueError):
                    continue
                found += [piece for piece in pieces if piece in decoded]
    return found


@pytest.mark.parametrize("key", CANARIES)
@pytest.mark.parametrize("form", list(encodings("x" * 8)))
def test_every_encoding_of_a_registered_key_is_masked(key: str, form: str) -> None:
    echoed = encodings(key)[form]
    text = f"error: invalid key '{echoed}' (request {echoed})"
    out = redact(text)
    assert echoed not in out and key not in out
    assert out.count("***") == 2
    assert redact_bytes(text.encode()) == out.encode()


@pytest.mark.parametrize("key", CANARIES)
@pytest.mark.parametrize("prefix", ["", "u", "us", "use", "user", "user:", "Bearer "])
def test_base64_of_a_key_embedded_at_any_offset_is_masked(key: str, prefix: str) -> None:
    # base64("user:KEY") shares no substring with base64("KEY"): what is stable depends
    # on the key's offset modulo 3.
    for alphabet in (base64.b64encode, base64.urlsafe_b64encode):
        encoded = alphabet((prefix + key + "!tail").encode()).decode()
        assert decodable_key_bytes(encoded, key), "the test must be able to see the key"
        out = redact(f"Authorization: Basic {encoded}")
        assert decodable_key_bytes(out, key) == [], out


@pytest.mark.parametrize("key", CANARIES)
def test_variants_cover_the_listed_forms(key: str) -> None:
    variants = set(secret_variants(key))
    assert set(encodings(key).values()) <= variants
    assert set(variants) <= set(registered_variants())
    assert secret_variants("abc") == []  # too short to mask safely


def test_short_values_are_not_registered() -> None:
    register_secret("ab1")
    assert redact("ab1 stays") == "ab1 stays"
    assert "ab1" not in registered_variants()


def test_cut_off_copies_are_masked() -> None:
    key = CANARIES[0]
    # aiohttp's "Got more than 8190 bytes when reading: b'aaaa...Zx9unitPL...'"
    assert redact(f"b'{'a' * 20}{key[:10]}...'") == f"b'{'a' * 20}***...'"
    assert redact(f"reason text {key[:7]}") == "reason text ***"  # truncated at the end
    assert redact(f"x {key[: len(key) // 2 + 1]} y") == "x *** y"  # over half of it
    assert redact(f"...{key[-8:]} rest") == "...*** rest"  # cut at the front
    assert redact(f"{key[:4]} is too little to mean anything") == f"{key[:4]} is too little to mean anything"
    body = (b"x" * 100 + key.encode())[:-5]  # a forensic prefix cut inside the key
    assert redact_bytes(body) == b"x" * 100 + b"***"


@pytest.mark.parametrize("key", CANARIES)
def test_contains_secret_finds_every_form_whole_or_cut_off(key: str) -> None:
    for form in encodings(key).values():
        data = f"before {form} after".encode()
        assert contains_secret(data)
        assert redact_secrets(data.decode()) == "before *** after"
        # The form as the text of a JSON string in a body: backslashes doubled.
        assert contains_secret(json.dumps({"text": f"before {form} after"}, ensure_ascii=False).encode())
    half = len(key) // 2 + 1
    assert contains_secret(f"x {key[:half]}...".encode())
    assert contains_secret(f"...{key[-half:]} x".encode())
    assert redact_secrets(f"x {key[:half]}...") == "x ***..."
    assert not contains_secret(b"an ordinary body with sk-look-alike-text and Bearer words")


def test_redact_secrets_keeps_text_that_only_looks_like_a_key() -> None:
    text = f"use sk-proj-abcdefghijkl or Bearer tok3n, not {CANARIES[0]}"
    assert redact_secrets(text) == "use sk-proj-abcdefghijkl or Bearer tok3n, not ***"


def test_redact_bytes_keeps_other_bytes_exact_and_works_on_non_utf8() -> None:
    key = CANARIES[3].encode()
    body = b"\xff\xfe\x00garbage " + key + b" \x80\x81 " + base64.b64encode(key) + b"\xc3("
    out = redact_bytes(body)
    assert key not in out and base64.b64encode(key) not in out
    assert out == b"\xff\xfe\x00garbage *** \x80\x81 ***\xc3("


def test_redact_bytes_is_fast_on_64_kib_bodies() -> None:
    body = (b"\x00\xff some provider text " * 4000)[: 64 * 1024]
    dense = (CANARIES[0].encode() + b" " + CANARIES[5].encode()[:10] + b"... ") * 1400
    # CPU time of this thread, not wall time: the suite runs in parallel (pytest-xdist) on a
    # shared machine, where waiting for a core would count against redact_bytes otherwise.
    started = time.thread_time()
    for _ in range(10):
        redact_bytes(body)
        out = redact_bytes(dense[: 64 * 1024])
    assert (time.thread_time() - started) / 10 < 0.05
    assert CANARIES[0].encode() not in out


def test_unregistered_keys_of_known_shapes_are_masked_by_pattern() -> None:
    for key in ("sk-proj-abcdEFGH1234+/xyz", "hf_abcdefghijklmnopqrstu", "nvapi-abcdefghijklmnop-qr"):
        assert key not in redact(f"bad key {key} given"), key
    assert redact("Authorization: Bearer abc.def.ghi") == "Authorization: Bearer ***"
    harmless = "resp_0123456789abcdef task-1234567 hf_model"
    assert redact(harmless) == harmless


def test_database_passwords_are_read_every_way_a_parser_might() -> None:
    assert database_passwords("postgresql://u:s3cretpw@h:5432/db") == ["s3cretpw"]
    # An unescaped "@": split at the first, at the last, and the part in between.
    assert set(database_passwords("postgresql://u:left@right@h/db")) == {"left", "left@right", "right"}
    # A password= query parameter, any case, as written and URL-decoded.
    assert set(database_passwords("postgresql://u@h/db?sslmode=require&PassWord=a%2Bb+c")) == {
        "a%2Bb+c",
        "a+b+c",
        "a+b c",
    }
    assert database_passwords("postgresql://u:p%40ss@h/db") == ["p%40ss", "p@ss"]
    assert database_passwords("sqlite:////tmp/back@up@2024.db") == []
    assert database_passwords(None) == []


def test_registered_database_passwords_are_masked() -> None:
    register_database_url("postgresql://u:LeftAlpha42x@RightBravo77y@h/db?password=QueryCharlie5z")
    text = "could not connect to RightBravo77y@h as u with LeftAlpha42x and QueryCharlie5z"
    assert redact(text) == "could not connect to ***@h as u with *** and ***"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:secret@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgresql://u:p@ss@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:pa/ss@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u@h/db?password=PW9xyz&sslmode=require", "postgresql://u@h/db?sslmode=require"),
        (
            "postgresql://h/db?user=u&Password=x&sslkey=/k&app_token=t&application_name=a",
            "postgresql://h/db?user=u&application_name=a",
        ),
        ("sqlite:///demo.db", "sqlite:///demo.db"),
        ("sqlite:////tmp/a@b/x.db", "sqlite:////tmp/a@b/x.db"),
    ],
)
def test_database_urls_are_shown_without_credentials(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_sqlalchemy_urls_are_shown_without_credentials() -> None:
    from archiver.dburl import normalize_database_url

    url = normalize_database_url("postgresql://u:p@ss@h/db?password=PW9xyz")
    assert redact_url(url) == "postgresql+asyncpg://u:***@h/db"


def test_scrub_outcome_masks_reasons_and_forensic_bodies_but_never_archived_bodies() -> None:
    key = CANARIES[5]
    body = f'{{"error": {{"message": "bad key {key}"}}}}'.encode()
    retry = scrub_outcome(Retry(1.0, f"HTTP 500: {key}", 500, body))
    assert isinstance(retry, Retry) and key not in retry.reason and retry.body is not None
    assert key.encode() not in retry.body and retry.delay_s == 1.0 and retry.status_code == 500
    failed = scrub_outcome(Permanent("failed", f"HTTP 400: {key}", 400, body))
    assert isinstance(failed, Permanent) and key not in failed.reason
    assert failed.body is not None and key.encode() not in failed.body and failed.state == "failed"
    stop = scrub_outcome(StopAll(f"key {key} refused", 401))
    assert isinstance(stop, StopAll) and key not in stop.reason and stop.status_code == 401
    archived = Archived(f'{{"id": "resp_1", "text": "{key}"}}'.encode(), 200, True, "completed")
    assert scrub_outcome(archived) is archived
    assert scrub_outcome(Retry(1.0, "plain")) == Retry(1.0, "plain")


def test_redact_value_walks_nested_values() -> None:
    key = CANARIES[1]
    value = {"a": [key, {"b": (f"x{key}", 3, None)}], "c": key.encode(), "d": ValueError(key)}
    out = redact_value(value)
    assert key not in repr(out)
    assert out["a"][1]["b"][1:] == [3, None]
    assert out["d"] == "ValueError: ***"
