"""The echoed-secret check on bodies: every escape a JSON encoder may use, and clean bodies."""

from __future__ import annotations

import json

import pytest

from archiver.echoes import body_echoes_secret, scrub_rows
from archiver.normalize import normalize_body
from archiver.redaction import register_secret

KEY = "Yv7-echoUnit/8Qm3+zT6wNp2Lk"  # unique to this module: registered for the session


@pytest.fixture(autouse=True, scope="module")
def _registered() -> None:
    register_secret(KEY)


def body(text: str) -> bytes:
    return json.dumps({"id": "resp_1", "status": "completed", "model": text}).encode()


@pytest.mark.parametrize(
    "spelled",
    [
        KEY,
        KEY.replace("/", "\\/"),
        "".join(f"\\u{ord(c):04x}" for c in KEY),  # no byte of it spells the key
        KEY[:5] + "\\u" + f"{ord(KEY[5]):04x}" + KEY[6:],  # one character escaped
        KEY[: len(KEY) // 2 + 1] + "...",  # cut off, over half of it
    ],
)
def test_every_spelling_of_the_key_is_found_and_masked_in_the_rows(spelled: str) -> None:
    raw = body("x").replace(b'"x"', f'"m-{spelled}"'.encode())
    assert body_echoes_secret(raw)
    rows = scrub_rows(normalize_body(raw))
    assert KEY[:8] not in json.dumps(rows.response) and "***" in rows.response["model"]


def test_bodies_without_the_key_are_not_flagged() -> None:
    assert not body_echoes_secret(body("gpt-4o"))
    assert not body_echoes_secret(body("caf\u00e9 \\/ sk-look-alike-0123456789 Bearer abc"))
    assert not body_echoes_secret(body(KEY[:6]))  # too little of it to mean anything
