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


SPELLINGS = [
    KEY,
    KEY.replace("/", "\\/"),
    "".join(f"\\u{ord(c):04x}" for c in KEY),
    KEY[:5] + "\\u" + f"{ord(KEY[5]):04x}" + KEY[6:],
    KEY[: len(KEY) // 2 + 1] + "...",
]


def large(text: str, *, before: int) -> bytes:
    """A body past ``body_head.SHALLOW_FROM`` (its echo check parses nothing) holding
    ``text`` (JSON string content) after ``before`` bytes of escaped padding, so it may
    fall anywhere in the check's windows."""
    from archiver.body_head import SHALLOW_FROM

    pad = "\\u00e9" * (before // 6)
    tail = "\\n" * (SHALLOW_FROM // 2)
    return f'{{"id":"resp_1","status":"completed","model":"{pad}{text}{tail}"}}'.encode()


@pytest.mark.parametrize("spelled", SPELLINGS)
@pytest.mark.parametrize("before", [0, (1 << 16) - 7, (1 << 16) + 3, 5 << 16])
def test_every_spelling_of_the_key_is_found_in_a_large_body_unparsed(spelled: str, before: int) -> None:
    raw = large(f"m-{spelled}", before=before)
    assert body_echoes_secret(raw)
    rows = scrub_rows(normalize_body(raw))
    assert KEY[:8] not in json.dumps(rows.response) and "***" in rows.response["model"]


def test_large_bodies_without_the_key_are_not_flagged() -> None:
    escapes = 'caf\\u00e9 \\/ \\ud83d\\ude00 \\ud83d \\\\u0059v7 \\"'
    assert not body_echoes_secret(large(escapes, before=1 << 16))
    assert not body_echoes_secret(large(KEY[:6], before=3))


def test_the_windowed_check_agrees_with_the_serialized_form() -> None:
    """Random strings of escapes and key pieces: the check without a parse flags a large body
    exactly when the serialized form of its parse holds the key (seeded)."""
    import random

    from archiver.echoes import _unescaped_holds_secret
    from archiver.jsontext import json_bytes, loads
    from archiver.redaction import contains_secret

    pieces = [
        *[f"\\u{ord(c):04x}" for c in KEY],
        *KEY,
        "\\\\",
        '\\"',
        "\\/",
        "\\n",
        "\\u0000",
        "\\ud83d\\ude00",
        "\\udc00",
        "\\u005c",
        "\\u0022",
        "é",
        " ",
    ]
    rng = random.Random(7)
    for _ in range(40):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 400)))
        if rng.random() < 0.5:
            cut = rng.randrange(len(KEY) // 2, len(KEY) + 1)
            text += "".join(f"\\u{ord(c):04x}" if rng.random() < 0.5 else c for c in KEY[:cut])
        # Called directly, the check needs no body past SHALLOW_FROM: padding of 2-3 of its
        # 64 KiB windows puts the text anywhere in them (1 MiB took this test 18 s).
        pad = "\\u00e9" * (rng.randrange(1 << 17) // 6)
        tail = "\\n" * (1 << 15)
        raw = f'{{"id":"resp_1","model":"{pad}{text}{tail}"}}'.encode()
        assert _unescaped_holds_secret(raw) == contains_secret(json_bytes(loads(raw))), text


@pytest.mark.parametrize("cut", [1, 5, len(KEY) // 2, len(KEY) - 1])
def test_a_key_cut_by_the_checks_window_is_found(cut: int) -> None:
    """Every character of the key written as an escape, the 64 KiB window of the check
    without a parse ending after ``cut`` of them: found (each window starts with the end
    of the one before, and half of a key counts on its own)."""
    from archiver.echoes import _WINDOW, _unescaped_holds_secret

    escaped = "".join(f"\\u{ord(c):04x}" for c in KEY)
    pad = "a" * (_WINDOW - 6 * cut)
    raw = f'{{"id":"resp_1","model":"{pad}{escaped}"}}'.encode()
    assert _unescaped_holds_secret(raw)
