"""Hostile (hostile13): the pre-parse limits of archiver.jsontext, their gaps and their time.

- Arrays, strings and numbers were each counted on their own (numbers not at all): a body
  under every limit could hold all three at once, parsed at 14-18 times its size
  (``["a",1.5],``: 17.7, ``[-9,-9],``: 18.1, ``-9,`` alone: 13.4).
- A member name with whitespace before its colon (``"a" :0``, valid JSON) was not seen as
  a name.
- 16 MiB of member names of 300 short spellings (``"123":0,``) took ``string_counts`` 4.3 s,
  one pass over the text per kept spelling (256).
- The controls: bodies as dense as real ones come, at 16 MiB, are still read.
"""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from archiver.jsontext import TooManyContainers, loads, string_counts

MiB = 1 << 20
BODY = 16 * MiB - 1024


def filled(piece: bytes, size: int = 2 * MiB) -> bytes:
    head = b'{"id":"resp_h13","object":"response","status":"completed","output":[],"x":['
    return head + piece * ((size - len(head) - 8) // len(piece)) + b"0]}"


@pytest.mark.parametrize(
    "piece",
    [b'["a",1.5],', b"[-9,-9],", b'"a",-9,-9,', b"-9,", b"[300,300],", b'["a",1e5],'],
    ids=["array-string-float", "negative-pairs", "string-negatives", "negatives", "large-pairs", "exponent"],
)
def test_a_body_under_each_limit_alone_but_costly_together_is_refused(piece: bytes) -> None:
    with pytest.raises(TooManyContainers, match=r"\(one per [58] bytes\)"):
        loads(filled(piece))


def test_member_names_spaced_from_their_colon_are_names() -> None:
    assert string_counts(b'{"a" :0,"b"\t:1,"c"\r\n :2,"d":3}') == (0, 4)
    spaced = b"{" + b"".join(b'"%x" :0,' % i for i in range(300_000)) + b'"z":0}'
    with pytest.raises(TooManyContainers, match="member names"):
        loads(spaced)


def test_names_of_a_few_hundred_spellings_are_counted() -> None:
    """Their count took 4.3 s for 16 MiB (256 passes of ``bytes.count``): its time is
    measured by ``bench/pre_parse.py`` against a body of one spelling, not asserted here."""
    unit = b"".join(b'"%03d":0,' % i for i in range(300))
    body = b'{"id":"r","x":{' + unit * ((BODY - 30) // len(unit)) + b'"z":0}}'
    values, names = string_counts(body)
    assert values == 1 and 250_000 < names < 400_000, (values, names)


def _logprob(token: str) -> dict[str, Any]:
    return {"token": token, "logprob": -0.123456789, "bytes": list(token.encode())}


def _logprobs(words: list[str]) -> bytes:
    rng = random.Random(1)
    entries, size = [], 0
    while size < BODY - 4096:
        top = [_logprob(rng.choice(words)) for _ in range(20)]
        entry = {**_logprob(rng.choice(words)), "top_logprobs": top}
        size += len(orjson.dumps(entry)) + 1
        entries.append(entry)
    content = {"type": "output_text", "text": "x", "annotations": [], "logprobs": entries}
    message = {"type": "message", "role": "assistant", "content": [content]}
    return orjson.dumps({"id": "resp_lp", "object": "response", "status": "completed", "output": [message]})


def _tools() -> bytes:
    tools, size = [], 0
    kinds = ["string", "integer", "number", "boolean"]
    while size < BODY - 8192:
        n = len(tools)
        properties = {
            f"field_{n}_{j}": {"type": kinds[j % 4], "description": f"Field {j} of tool {n}.", "minimum": -10}
            for j in range(15)
        }
        parameters = {"type": "object", "properties": properties, "required": list(properties)[:5]}
        tool = {"type": "function", "name": f"tool_{n}", "description": "Does it.", "parameters": parameters}
        size += len(orjson.dumps(tool)) + 1
        tools.append(tool)
    return orjson.dumps({"id": "resp_tools", "status": "completed", "tools": tools, "output": []})


def _reasoning() -> bytes:
    text = ("Step 1: 2+2=4, -3.5 < 0.25; check 1e-3 against 1,024 items. " * 300_000)[: BODY - 4096]
    summary = [{"type": "summary_text", "text": text}]
    item = {"type": "reasoning", "summary": summary}
    return orjson.dumps({"id": "resp_r", "status": "completed", "output": [item]})


REAL = {
    "logprobs, one-character tokens": lambda: _logprobs(["a", "b", " ", "."]),
    "logprobs, words": lambda: _logprobs([" the", " of", "ing", " response", " 42", "."]),
    "logprobs, CJK and accents": lambda: _logprobs(["你", "好", "世界", "é", "\u2019"]),
    "tool schemas": _tools,
    "long reasoning": _reasoning,
}


@pytest.mark.parametrize("kind", list(REAL))
def test_large_real_bodies_are_read(kind: str) -> None:
    body = REAL[kind]()
    assert 15 * MiB < len(body) <= BODY
    assert loads(body)["status"] == "completed"
