"""The fetcher's check of a large 200 body (archiver.body_head) decides as the writer's parse does.

Every body here is at least ``SHALLOW_FROM`` bytes (padded with JSON whitespace, or with a
long string member the check skips), so it takes the path that builds no parse; each
decision is compared with :func:`archiver.jsontext.loads` of the same bytes: accepted with
the same kind, ``id`` and ``status``, or refused by both (a limit with the same error).
"""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from archiver import body_head
from archiver.body_head import SHALLOW_FROM, BodyHead, NotJson, read_head
from archiver.jsontext import (
    NestingTooDeep,
    TooManyContainers,
    TooManyStrings,
    TooMuchTogether,
    loads,
)
from archiver.outcomes import Archived, Retry
from archiver.policy import RetryPolicy, classify_response

PAD = b" " * SHALLOW_FROM


def padded(text: bytes) -> bytes:
    """``text`` after whitespace enough to take the shallow path (valid JSON stays valid)."""
    return PAD + text


def with_long_member(text: bytes) -> bytes:
    """``text`` (an object's members, without braces) in an object whose first member is a
    string of ``SHALLOW_FROM`` bytes: the string is skipped, not built."""
    return b'{"pad":"' + b"p" * SHALLOW_FROM + b'",' + text + b"}"


def exact(body: bytes) -> tuple[Any, ...]:
    """What the writer's parse makes of ``body``: (kind, id, id kind, status) or the refusal."""
    try:
        value = loads(body)
    except (ValueError, RecursionError) as exc:
        return ("refused", _limit(exc))
    head = BodyHead.of_value(value)
    return (head.kind, head.id, head.id_kind, head.status)


def shallow(body: bytes, *, parse: bool = False) -> tuple[Any, ...]:
    """What :func:`read_head` makes of ``body``; ``parse``: it may hand it to ``loads`` (an
    escape in ``id`` or ``status`` of a body with a lone surrogate escape)."""
    assert len(body) >= body_head.SHALLOW_FROM
    try:
        head = read_head(body)
    except (ValueError, RecursionError) as exc:
        return ("refused", _limit(exc))
    assert parse or head.parsed is None, "a large body is not parsed"
    return (head.kind, head.id, head.id_kind, head.status)


def _limit(exc: BaseException) -> str | None:
    """The limit error's text, which both paths must raise alike; None for 'not JSON'."""
    return str(exc) if isinstance(exc, NestingTooDeep | TooManyContainers) else None


# (name, text): bodies the writer's parse accepts and refuses, each a case where msgspec
# and loads could part (see archiver.body_head).
CASES: list[tuple[str, bytes]] = [
    ("plain", b'{"id":"resp_1","status":"completed"}'),
    ("in-progress", b'{"id":"resp_1","status":"in_progress"}'),
    ("no-status", b'{"id":"resp_1"}'),
    ("status-null", b'{"id":"resp_1","status":null}'),
    ("status-number", b'{"id":"resp_1","status":3}'),
    ("status-object", b'{"id":"resp_1","status":{"a":[1,{"b":"c"}]}}'),
    ("duplicate-id", b'{"id":"a","id":"b"}'),
    ("duplicate-id-last-not-string", b'{"id":"a","id":7}'),
    ("duplicate-id-last-string", b'{"id":[1],"id":"resp_1"}'),
    ("duplicate-status", b'{"id":"a","status":"queued","status":"completed"}'),
    ("escaped-member-name", b'{"i\\u0064":"resp_1","st\\u0061tus":"queued"}'),
    ("escaped-id", b'{"id":"resp\\u005f1\\/x"}'),
    ("nested-id-not-top", b'{"x":{"id":"b","status":"queued"},"id":"a"}'),
    ("lone-surrogate-skipped", b'{"id":"a","x":"\\ud83d","status":"completed"}'),
    ("lone-low-surrogate-skipped", b'{"id":"a","x":"\\uDE00"}'),
    ("surrogate-pair-skipped", b'{"id":"a","x":"\\ud83d\\ude00"}'),
    ("lone-surrogate-in-id", b'{"id":"\\ud83d","x":"\\ud83d"}'),
    ("lone-surrogate-in-status", b'{"id":"a","status":"\\udc00x"}'),
    ("lone-surrogate-in-name", b'{"\\ud83d":1,"id":"a"}'),
    ("escaped-backslash-before-u-d", b'{"id":"a","x":"\\\\ud83d"}'),
    ("lone-surrogate-and-syntax-error", b'{"id":"a","x":"\\ud83d",}'),
    ("lone-surrogate-bad-hex", b'{"id":"a","x":"\\ud8zz"}'),
    ("lone-surrogate-top-array", b'["\\ud83d"]'),
    ("integer-beyond-64-bits", b'{"id":"a","x":123456789012345678901234567890}'),
    ("integer-of-5000-digits", b'{"id":"a","x":' + b"9" * 5000 + b"}"),
    ("id-integer-beyond-64-bits", b'{"id":123456789012345678901234567890}'),
    ("double-out-of-range", b'{"id":"a","x":1e400,"y":-1E+999}'),
    ("nan", b'{"id":"a","x":NaN}'),
    ("infinity", b'{"id":"a","x":Infinity}'),
    ("minus-infinity", b'{"id":"a","x":-Infinity}'),
    ("id-number", b'{"id":1.5}'),
    ("id-true", b'{"id":true}'),
    ("id-null", b'{"id":null}'),
    ("id-array", b'{"id":["a"]}'),
    ("id-object", b'{"id":{"id":"a"}}'),
    ("id-empty-string", b'{"id":""}'),
    ("invalid-utf8-in-skipped-string", b'{"id":"a","x":"\xff"}'),
    ("utf8-encoded-surrogate", b'{"id":"a","x":"\xed\xa0\x80"}'),
    ("overlong-utf8", b'{"id":"a","x":"\xc0\x80"}'),
    ("truncated-utf8", b'{"id":"a","x":"\xe2\x82"}'),
    ("valid-utf8", '{"id":"a","x":"é漢😀\ufffe"}'.encode()),
    ("invalid-utf8-in-id", b'{"id":"a\xff"}'),
    ("control-character", b'{"id":"a","x":"a\x01b"}'),
    ("raw-tab-in-string", b'{"id":"a","x":"a\tb"}'),
    ("del-in-string", b'{"id":"a","x":"\x7f"}'),
    ("bad-escape", b'{"id":"a","x":"\\x"}'),
    ("bad-unicode-escape", b'{"id":"a","x":"\\u12g4"}'),
    ("leading-zero", b'{"id":"a","x":01}'),
    ("bare-fraction", b'{"id":"a","x":1.}'),
    ("plus-sign", b'{"id":"a","x":+1}'),
    ("trailing-comma", b'{"id":"a","x":[1,],}'),
    ("single-quotes", b"{'id':'a'}"),
    ("bom", b'\xef\xbb\xbf{"id":"a"}'),
    ("utf16", '{"id":"a"}'.encode("utf-16")),
    ("trailing-garbage", b'{"id":"a"} x'),
    ("two-values", b'{"id":"a"}{"id":"a"}'),
    ("trailing-whitespace", b'{"id":"a"} \r\n\t'),
    ("vertical-tab", b'{"id":"a"}\x0b'),
    ("form-feed", b'\x0c{"id":"a"}'),
    ("no-break-space", b'{"id":"a",\xc2\xa0"x":1}'),
    ("empty", b""),
    ("truncated", b'{"id":"a","x":[1,2'),
    ("top-array", b'["id","a"]'),
    ("top-array-truncated", b"[1,2"),
    ("top-array-then-garbage", b"[1] x"),
    ("top-string", b'"a"'),
    ("top-number", b"-1.5e3"),
    ("top-number-then-more", b'1, "id": "a"'),
    ("top-true", b"true"),
    ("top-null", b"null"),
    ("nesting-512", b'{"id":"a","x":' + b"[" * 511 + b"]" * 511 + b"}"),
    ("nesting-513", b'{"id":"a","x":' + b"[" * 512 + b"]" * 512 + b"}"),
    ("nesting-600-objects", b'{"id":"a","x":' + b'{"a":' * 600 + b"1" + b"}" * 600 + b"}"),
]

# The escapes of these bodies' ``id`` or ``status`` were read from a copy whose lone
# surrogate escapes were replaced: ``loads`` decides those.
PARSED = {"lone-surrogate-in-id", "lone-surrogate-in-status"}


@pytest.mark.parametrize(("name", "text"), CASES, ids=[name for name, _ in CASES])
def test_padded_bodies_decide_as_the_parse(name: str, text: bytes) -> None:
    body = padded(text)
    assert shallow(body, parse=name in PARSED) == exact(body)


MEMBER_CASES = [(name, text[1:-1]) for name, text in CASES if text.startswith(b"{") and text.endswith(b"}")]


@pytest.mark.parametrize(("name", "members"), MEMBER_CASES, ids=[name for name, _ in MEMBER_CASES])
def test_bodies_with_a_long_skipped_string_decide_as_the_parse(name: str, members: bytes) -> None:
    body = with_long_member(members)
    assert shallow(body, parse=name in PARSED) == exact(body)


def test_invalid_utf8_far_into_the_body_is_found_across_slices() -> None:
    for where in (SHALLOW_FROM - 2, SHALLOW_FROM - 1, SHALLOW_FROM, 3 * SHALLOW_FROM + 1):
        text = "é" * ((where - 20) // 2)
        body = b'{"id":"a","x":"' + text.encode() + b"\xff" + "😀".encode() * 10 + b'"}'
        assert shallow(body) == exact(body) == ("refused", None)
        with pytest.raises(NotJson, match=r"invalid UTF-8 at byte \d+ \(0xff\)"):
            read_head(body)
        good = body.replace(b"\xff", b"")
        assert shallow(good) == exact(good) == ("object", "a", "string", None)


def dense(piece: bytes, size: int) -> bytes:
    head = b'{"id":"resp_1","object":"response","status":"completed","output":[],"x":['
    return head + piece * ((size - len(head) - 8) // len(piece)) + b"0]}"


@pytest.mark.parametrize(
    ("piece", "error"),
    [
        (b"[],", TooManyContainers),
        (b'{"a":0},', TooManyContainers),
        (b'"a",', TooManyStrings),
        (b'["a",1.5],', TooMuchTogether),
        (b"-9,", TooMuchTogether),
    ],
    ids=["arrays", "objects", "strings", "together", "numbers"],
)
def test_the_parse_limits_refuse_a_large_body_alike(piece: bytes, error: type[Exception]) -> None:
    body = dense(piece, 2 * SHALLOW_FROM)
    with pytest.raises(error) as raised:
        read_head(body)
    assert type(raised.value) is error
    assert shallow(body) == exact(body)


def test_members_holding_small_arrays_are_read_without_their_parse() -> None:
    """The body of tests/acceptance/test_hostile13_memory.py: within every limit."""
    names = [b"%02x" % i for i in range(256)]
    member_object = b"{" + b",".join(b'"' + name + b'":["y"]' for name in names) + b"},"
    body = dense(member_object, 2 * SHALLOW_FROM)
    assert shallow(body) == exact(body) == ("object", "resp_1", "string", "completed")


def test_small_bodies_keep_the_exact_parse() -> None:
    head = read_head(b'{"id":"a","x":"\\ud83d"}')
    assert head.parsed == {"id": "a", "x": "\ud83d"}
    assert head.id == "a"


def test_mutated_bodies_decide_as_the_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    """Random edits of a real-looking body, each padded past SHALLOW_FROM (seeded).

    SHALLOW_FROM is 4 KiB here: the same path for bodies 256 times smaller (600 bodies
    padded to 1 MiB took 26 s); the UTF-8 check's slices have their own test above.
    """
    monkeypatch.setattr(body_head, "SHALLOW_FROM", 4096)
    pad = b" " * 4096
    base = orjson.dumps(
        {
            "id": "resp_1",
            "object": "response",
            "status": "in_progress",
            "output": [{"type": "message", "content": [{"type": "output_text", "text": "héllo \u2028"}]}],
            "usage": {"input_tokens": 12, "output_tokens": -3, "x": 1.5e300, "y": [True, False, None]},
            "metadata": {"k": "v\\u00e9\\ud83d\\n\\/"},
        }
    )
    alphabet = b'{}[],:"\\ u0123456789.eE+-tfnrlsaxdD\xff\xc3\xa9\t\n\x00'
    rng = random.Random(20_261_202)
    disagreements = []
    for _ in range(600):
        text = bytearray(base)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(text) + 1)
            edit = rng.randrange(3)
            if edit == 0 and at < len(text):
                del text[at]
            elif edit == 1 and at < len(text):
                text[at] = rng.choice(alphabet)
            else:
                text.insert(at, rng.choice(alphabet))
        body = pad + bytes(text)
        if shallow(body, parse=True) != exact(body):
            disagreements.append((bytes(text), shallow(body, parse=True), exact(body)))
    assert not disagreements, disagreements[:5]


POLICY = RetryPolicy(max_attempts=3)


def classify(body: bytes) -> Any:
    return classify_response(
        status_code=200,
        headers={},
        body=body,
        requested_id="resp_1",
        attempt=1,
        previous_status_code=None,
        policy=POLICY,
        profile="openai",
        now=0.0,
        rand=0.5,
    )


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (b'{"id":"resp_1","status":"queued"}', None),
        (b'{"id":"resp_2"}', "body id 'resp_2' differs from requested 'resp_1'"),
        (b'{"id":7}', "body 'id' is a number, not a string"),
        (b'{"id":["resp_1"]}', "body 'id' is a array, not a string"),
        (b'{"status":"completed"}', "body has no 'id' field"),
        (b'["resp_1"]', "body is a JSON array, not an object"),
        (b'{"id":"resp_1","x":NaN}', "body is not valid JSON: "),
        (b'{"id":"resp_1","x":"\xff"}', "body is not valid JSON: invalid UTF-8 at byte "),
    ],
)
def test_the_fetch_outcome_of_a_large_body_matches_a_small_one(text: bytes, reason: str | None) -> None:
    small, large = classify(text), classify(padded(text))
    if reason is None:
        assert isinstance(small, Archived) and isinstance(large, Archived)
        assert (small.terminal, small.response_status) == (False, "queued")
        assert (large.terminal, large.response_status) == (False, "queued")
        assert large.body is None and small.body is not None
        return
    assert isinstance(small, Retry) and isinstance(large, Retry)
    assert large.reason.startswith(reason), large.reason
    assert small.reason.startswith(reason.split(":")[0]), small.reason
    assert large.reason.endswith(f"({len(padded(text))} bytes)") or "not valid JSON" not in reason


def test_a_nesting_refusal_of_a_large_body_reads_as_a_small_ones() -> None:
    text = b'{"id":"resp_1","x":' + b"[" * 600 + b"]" * 600 + b"}"
    small, large = classify(text), classify(padded(text))
    assert isinstance(small, Retry) and isinstance(large, Retry)
    assert large.reason.replace(str(len(padded(text))), "N") == small.reason.replace(str(len(text)), "N")
