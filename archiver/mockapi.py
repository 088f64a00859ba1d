"""A mock of the OpenAI-compatible Responses API (``GET {base_url}/responses/{id}``).

Tests of the whole project talk real HTTP to it, users point their own pipelines at it
(``archiver mock-server``), and benchmarks run it as a separate process, so the hot path
only looks up a pre-rendered body: bodies are serialized once per (ID, fetch phase, seed)
with orjson and cached.

Routes (``prefix`` defaults to ``/v1``):

- ``GET {prefix}/responses/{response_id}``: the response (the ID arrives URL-quoted).
- ``GET /_mock/stats``: ``{"requests_total", "requests_by_id", "status_counts",
  "in_flight", "max_in_flight", "dropped_total"}``. ``status_counts`` is keyed by the
  status code as a string; connections dropped on purpose count in ``dropped_total``.
- ``GET {prefix}/responses/{response_id}/input_items``: the input items, paginated as
  on OpenAI (``limit`` 1-100, default 20; ``after``; ``order`` asc/desc, default desc;
  ``has_more``, ``first_id``, ``last_id``); see :func:`input_items_for`. Served under a
  DashScope path (one with ``/compatible-mode/``), a page also carries DashScope's list
  fields: ``id``, ``model`` and ``created_at`` in *milliseconds*.
- ``POST /_mock/reset``: clears the stats and the per-ID fetch counters.

The stats routes never require the API key.

Scenarios
---------
The ID chooses the behaviour, deterministically. IDs of the form
``resp_<scenario><N>_<anything>`` (regex ``^resp_([a-z]+)(\\d*)_``) select a scenario;
``N`` counts fetches of that ID (the mock's per-ID fetch counter, which counts every
request for the ID, including rejected ones, until ``POST /_mock/reset``). For the
scenarios that take ``N``, "first N" means fetches ``1..N``; without ``N`` the fault
lasts forever. Any other ID (unknown scenario names, DeepSeek UUIDs, ``gen-...``, IDs
with ``.`` or ``:``) is a normal completed response.

- ``ok`` (and every normal ID): 200, a realistic completed DashScope-style body. The
  ID's hash picks the model, timestamps, token counts and one of ten output shapes:
  message; reasoning + message; function_call; web_search_call + message with
  url_citation annotations; code_interpreter_call + message; web_search_call +
  web_extractor_call + message; web_search_image_call + message; image_search_call +
  message; mcp_call + message; file_search_call + message. Some texts are Chinese or
  carry emoji; ``usage.x_tools`` is present when a built-in tool ran.
- ``kitchensink``: 200 with every documented output item type, an unknown
  ``hologram_call`` item and an unknown top-level field (``x_hologram_session``).
- ``notfound``: 404 ``Response with id '<id>' not found.``; ``notfoundN`` is a
  transient 404 (first N fetches), then 200.
- ``flakyN``: 503 with a JSON error body, then 200.
- ``ratelimitN``: 429 ``Throttling.RateQuota`` with ``retry-after`` (seconds, may be
  fractional) and ``retry-after-ms`` headers, then 200.
- ``quotaN``: 429 OpenAI ``insufficient_quota`` (no Retry-After), then 200.
- ``truncN``: 200 whose body is the real body cut in half (invalid JSON), then whole.
- ``garbage``: 200 ``text/html`` ``<html>502 Bad Gateway</html>``.
- ``mismatch``: 200 with a valid body whose ``id`` is another ID.
- ``pendingN``: fetch 1 ``queued``, fetches 2..N ``in_progress`` (partial output),
  then ``completed``; ``completed_at`` and ``usage`` are null until done. Without N it
  never completes.
- ``big``: 200, about 4 MB of message text (non-ASCII included).
- ``nul``: 200, message text with a NUL (``\\u0000`` in JSON) and other control chars.
- ``unicode``: 200, heavy non-ASCII: CJK, astral-plane emoji, ZWJ sequences, combining
  marks, Arabic and Hebrew (RTL) text.
- ``hangN``: sleeps ``hang_s`` (cut short when the server closes) and then answers
  normally; later fetches answer at once.
- ``resetN``: closes the connection without any response bytes, then 200. aiohttp's
  client silently retries an idempotent request once after a disconnect, so one
  ``session.get`` may use up two fetches.
- ``gated``: 200 with the fields OpenAI returns only when asked for with ``include[]``
  (see :data:`GATED_INCLUDE`): a reasoning item's ``encrypted_content``, a
  ``file_search_call``'s ``results``, a ``web_search_call``'s ``action.sources``, a
  ``code_interpreter_call``'s ``outputs``, and an ``output_text``'s ``logprobs``, each
  present only when its value was requested (``results``/``outputs`` are null
  otherwise). Its input items hold an ``input_image`` whose ``image_url`` and a
  ``computer_call_output`` whose ``output.image_url`` are likewise gated.
- ``chainN``: turn N of a conversation chained with ``previous_response_id`` (the rest of
  the ID names the conversation): a normal body, and as input items every earlier turn
  again (each turn's user message and the assistant's answer) plus turn N's user
  message, 2N - 1 items, the same items with the same ids on every turn, as a provider
  returns them.
- ``servererror``: 500. ``badrequest``: 400 ``InvalidParameter``. ``unauthorized``: 401
  ``invalid_api_key``. ``forbidden``: 403 ``AccessDenied.Unpurchased``. ``arrearage``:
  400 DashScope ``Arrearage``. (N works for these too, but they exist to be permanent.)

With ``MockConfig.api_key`` set, a missing or wrong ``Authorization: Bearer`` gets 401
``invalid_api_key`` (the presented key is never echoed). With ``bodies_dir`` set, the
JSON files there are served byte-exact for their top-level ``id`` (the first file in
name order wins a duplicate ID); ``bodies_only`` turns every other ID into a 404.
``fail_rate`` turns that fraction of requests for normal IDs (``ok``, IDs without a
scenario, files from ``bodies_dir``) into a transient fault
(429 with Retry-After, 500 or 503), decided by a hash of (seed, ID, fetch number), so a
given fetch always fails the same way whatever the request interleaving.

``include[]`` query values (repeated; ``include`` is read too) are recorded per ID in
``MockStats.include_by_id`` (requests without any are not). A request that carries a value listed in
``MockConfig.reject_include`` gets OpenAI's 400 ``invalid_value`` naming it (``param``
``include[N]``, the message listing the values still supported), on both routes.
"""

from __future__ import annotations

# Realistic Chinese model output uses fullwidth punctuation (，：！) on purpose.
import asyncio
import contextlib
import hashlib
import hmac
import random
import re
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import orjson
from aiohttp import web

__all__ = [
    "MockConfig",
    "MockServer",
    "MockStats",
    "body_for",
    "build_app",
    "input_items_for",
    "serve_forever",
    "start_mock_server",
]

SCENARIO_RE: Final = re.compile(r"^resp_([a-z]+)(\d*)_")
"""Selects a scenario from an ID: group 1 the name, group 2 the optional count N."""

SCENARIOS: Final = frozenset(
    {
        "ok", "kitchensink", "notfound", "flaky", "ratelimit", "quota", "trunc",
        "garbage", "mismatch", "pending", "big", "nul", "unicode", "hang", "reset",
        "servererror", "badrequest", "unauthorized", "forbidden", "arrearage",
        "manyinputs", "inputflaky", "noinputs", "gated", "chain",
    }
)  # fmt: skip

JSON_CONTENT_TYPE: Final = "application/json"
GARBAGE_BODY: Final = b"<html>502 Bad Gateway</html>"
BIG_BODY_BYTES: Final = 4 * 1024 * 1024
GATED_INCLUDE: Final = (
    "reasoning.encrypted_content",
    "file_search_call.results",
    "web_search_call.action.sources",
    "message.output_text.logprobs",
    "code_interpreter_call.outputs",
    "computer_call_output.output.image_url",
    "message.input_image.image_url",
)
"""The ``include[]`` values the mock understands (OpenAI's); other values are ignored."""
INCLUDE_RECORDS: Final = 16
ARRIVALS_KEPT: Final = 20_000
"""Retrieve-request arrival times kept in the stats (the last ones): bounded for benchmarks."""


@dataclass(frozen=True)
class MockConfig:
    """How the mock server behaves. Every field has a harmless default."""

    latency_ms: float = 0.0
    """Added to every responses request."""
    jitter_ms: float = 0.0
    """Uniform +- jitter around ``latency_ms`` (seeded RNG)."""
    api_key: str | None = None
    """When set, requests must carry ``Authorization: Bearer <key>``, else 401."""
    fail_rate: float = 0.0
    """Fraction of requests for normal IDs answered with a transient fault."""
    retry_after_s: float = 1.0
    """Sent as ``retry-after`` (seconds) and ``retry-after-ms`` on 429 answers."""
    hang_s: float = 300.0
    """How long a ``hang`` scenario sleeps before answering."""
    bodies_dir: Path | None = None
    """Serve the JSON files in this directory, keyed by top-level ``id``, byte-exact."""
    bodies_only: bool = False
    """With ``bodies_dir``: unknown IDs get 404 instead of generated bodies."""
    seed: int = 0
    prefix: str = "/v1"
    """Path of the base URL, e.g. ``http://127.0.0.1:PORT/v1``."""
    reject_include: frozenset[str] = frozenset()
    """``include[]`` values answered with a 400 naming them (a provider that does not know them)."""


@dataclass
class MockStats:
    """Live counters of the mock server (also served at ``GET /_mock/stats``)."""

    requests_total: int = 0
    requests_by_id: dict[str, int] = field(default_factory=dict)
    """Requests per response ID; also the per-ID fetch counter the scenarios use."""
    status_counts: dict[str, int] = field(default_factory=dict)
    in_flight: int = 0
    max_in_flight: int = 0
    dropped_total: int = 0
    """Connections closed without a response (the ``reset`` scenario)."""
    input_items_total: int = 0
    """Requests for ``/responses/{id}/input_items`` pages (not in ``requests_total``)."""
    input_items_by_id: dict[str, int] = field(default_factory=dict)
    arrivals: deque[float] = field(default_factory=lambda: deque(maxlen=ARRIVALS_KEPT))
    """Monotonic arrival times (seconds) of the last :data:`ARRIVALS_KEPT` requests (retrieve
    and input-item pages), for request-rate checks measured at the server."""
    include_by_id: dict[str, list[list[str]]] = field(default_factory=dict)
    """The ``include[]`` values of the requests for an ID that carried any (both routes, in
    arrival order, the first :data:`INCLUDE_RECORDS` per ID: bounded for long benchmarks)."""

    def reset(self) -> None:
        """Clear every counter; requests in progress still count as in flight."""
        self.requests_total = 0
        self.requests_by_id.clear()
        self.input_items_total = 0
        self.input_items_by_id.clear()
        self.include_by_id.clear()
        self.arrivals.clear()
        self.status_counts.clear()
        self.max_in_flight = self.in_flight
        self.dropped_total = 0

    def as_dict(self) -> dict[str, Any]:
        """The counters as the JSON object ``GET /_mock/stats`` answers."""
        return {
            "requests_total": self.requests_total,
            "requests_by_id": dict(self.requests_by_id),
            "status_counts": dict(self.status_counts),
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "dropped_total": self.dropped_total,
            "input_items_total": self.input_items_total,
            "input_items_by_id": dict(self.input_items_by_id),
            "include_by_id": {k: [list(v) for v in lists] for k, lists in self.include_by_id.items()},
            "arrivals": list(self.arrivals),
        }

    def max_in_window(self, window_s: float = 1.0) -> int:
        """The most requests that arrived within any ``window_s`` seconds."""
        return max_in_window(self.arrivals, window_s)


def max_in_window(times: Iterable[float], window_s: float = 1.0) -> int:
    """The most of ``times`` within any half-open window ``[t, t + window_s)``."""
    ordered = sorted(times)
    best = start = 0
    for end, at in enumerate(ordered):
        while at - ordered[start] >= window_s:
            start += 1
        best = max(best, end - start + 1)
    return best


# --------------------------------------------------------------------------- bodies


def _scenario(response_id: str) -> tuple[str | None, int | None]:
    """The scenario name and N chosen by an ID, or ``(None, None)`` for a normal ID."""
    match = SCENARIO_RE.match(response_id)
    if match is None or match.group(1) not in SCENARIOS:
        return None, None
    count = match.group(2)
    return match.group(1), int(count) if count else None


def _within(count: int | None, fetch_number: int) -> bool:
    """Whether a fault for the "first N fetches" (forever without N) applies."""
    return count is None or fetch_number <= count


def _phase(response_id: str, fetch_number: int) -> str:
    """The lifecycle phase of a body: ``queued``, ``in_progress`` or ``completed``."""
    name, count = _scenario(response_id)
    if name != "pending" or not _within(count, fetch_number):
        return "completed"
    return "queued" if fetch_number <= 1 else "in_progress"


def body_for(response_id: str, fetch_number: int = 1, seed: int = 0, include: Iterable[str] = ()) -> bytes:
    """The exact bytes the mock answers on a 200 for this ID and fetch.

    Fetches that are not a 200 (e.g. the first N of ``flakyN``) have no 200 body; for
    them this returns what a 200 would carry. ``truncN`` and ``garbage`` return the
    broken bytes they serve; IDs served from ``bodies_dir`` are the files' bytes.

    Args:
        response_id: The ID as requested (not URL-quoted).
        fetch_number: 1 for the first request of this ID, 2 for the next, ...
        seed: ``MockConfig.seed`` of the server.
        include: the ``include[]`` values of the request (only ``gated`` bodies differ).
    """
    name, count = _scenario(response_id)
    if name == "garbage":
        return GARBAGE_BODY
    if name == "big":
        return _render_big(response_id, seed)
    gates = frozenset(include) & frozenset(GATED_INCLUDE) if name == "gated" else frozenset()
    full = _render(response_id, _phase(response_id, fetch_number), seed, gates)
    if name == "trunc" and _within(count, fetch_number):
        return full[: len(full) // 2]
    return full


@lru_cache(maxsize=32768)
def _render(response_id: str, phase: str, seed: int, gates: frozenset[str] = frozenset()) -> bytes:
    """Serialize a body once; later fetches of the same (ID, phase, seed, gates) reuse the bytes."""
    name, _ = _scenario(response_id)
    return orjson.dumps(_BodyBuilder(response_id, seed, gates).build(name, phase))


@lru_cache(maxsize=4)  # 4 MB each: kept out of the large cache above
def _render_big(response_id: str, seed: int) -> bytes:
    return orjson.dumps(_BodyBuilder(response_id, seed).build("big", "completed"))


_MODELS: Final = ("qwen-plus", "qwen3-max", "qwen-flash", "qwen-plus-latest", "qwen3.5-plus")
_PLAIN_TEXTS: Final = (
    "Hello! Nice to meet you. How can I help you?",
    "The capital of France is **Paris**.",
    "你好！杭州今天多云，气温 18–25°C，适合出行。🌤️",
    "Here is what changed since the last release:\n\n1. Faster startup.\n"
    "2. Fewer retries under load.\n3. A clearer error when the key is wrong. ✅",
    "好的，会议纪要如下：\n- 预算已批准 💰\n- 下周一正式发布 🚀\n- 负责人：张伟",
    "Grüße aus Zürich! Die Antwort lautet 42 — ganz ohne Gewähr. 🇨🇭",
)
_UNICODE_TEXT: Final = (
    "多语言测试：你好，世界！こんにちは世界。안녕하세요 세계.\n"
    "Astral: 😀🚀🧑‍🚀👩🏽‍💻👨‍👩‍👧‍👦🏳️‍🌈 𝕳𝖊𝖑𝖑𝖔 𠀋𠀍𪚥 🀄🂡 𓀀𓁐\n"
    "RTL: مرحبا بالعالم — שלום עולם — \u202bنص مضمَّن\u202c ‏mixed‎ end\n"
    "Combining: e\u0301 a\u0308 n\u0303 Z\u0351\u0337\u0334a\u0362l\u0336g\u0338o\n"
    "Specials: \u00a0nbsp \u200bzwsp \u2028line-sep \u2029para-sep \ufeffbom \ufffdrepl"
)
_NUL_TEXT: Final = (
    "before NUL\u0000after NUL; bell\u0007 backspace\b formfeed\f vertical-tab\u000b "
    'escape\u001b[31m unit-sep\u001f delete\u007f tab\t cr\r lf\n quote" backslash\\ end'
)


class _BodyBuilder:
    """Builds one deterministic Response object from an ID's hash."""

    def __init__(self, response_id: str, seed: int, gates: frozenset[str] = frozenset()) -> None:
        self.response_id = response_id
        self.gates = gates
        self.key = f"{seed}\x00{response_id}".encode()
        self.hash = int.from_bytes(hashlib.blake2b(self.key, digest_size=8).digest(), "big")
        self.item_counter = 0

    def pick(self, bits: int, modulo: int) -> int:
        """A deterministic number in ``[0, modulo)`` from the ID hash, shifted by ``bits``."""
        return (self.hash >> bits) % modulo

    def uuid(self, label: str) -> str:
        """A UUID-shaped string derived from the ID hash and ``label``."""
        h = hashlib.blake2b(self.key + b"\x00" + label.encode(), digest_size=16).hexdigest()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    def item_id(self, prefix: str) -> str:
        self.item_counter += 1
        return f"{prefix}_{self.uuid(f'item{self.item_counter}')}"

    # ---- output items -------------------------------------------------------------

    def message(self, text: str, annotations: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        return {
            "content": [
                {"annotations": annotations or [], "text": text, "type": "output_text"},
            ],
            "id": self.item_id("msg"),
            "role": "assistant",
            "status": "completed",
            "type": "message",
        }

    def reasoning(self) -> dict[str, Any]:
        return {
            "id": self.item_id("msg"),
            "summary": [
                {
                    "text": "用户想知道杭州的天气。先确认城市，再给出温度和出行建议。"
                    " The answer should be short and friendly.",
                    "type": "summary_text",
                }
            ],
            "type": "reasoning",
        }

    def function_call(self) -> dict[str, Any]:
        return {
            "arguments": orjson.dumps({"location": "杭州市", "unit": "celsius"}).decode(),
            "call_id": f"call_{self.uuid('call').replace('-', '')[:24]}",
            "id": self.item_id("fc"),
            "name": "get_current_weather",
            "status": "completed",
            "type": "function_call",
        }

    def web_search_call(self) -> dict[str, Any]:
        return {
            "action": {
                "query": "杭州 今日 天气",
                "type": "search",
                "sources": [
                    {"type": "url", "url": "https://weather.example.com/hangzhou"},
                    {"type": "url", "url": "https://news.example.cn/2025/weather.html"},
                ],
            },
            "id": self.item_id("ws"),
            "status": "completed",
            "type": "web_search_call",
        }

    def cited_message(self) -> dict[str, Any]:
        text = "杭州今天多云转晴，最高 25°C。According to the forecast, rain is unlikely."
        return self.message(
            text,
            [
                {
                    "type": "url_citation",
                    "start_index": 0,
                    "end_index": 16,
                    "title": "杭州天气预报",
                    "url": "https://weather.example.com/hangzhou",
                },
                {
                    "type": "url_citation",
                    "start_index": 17,
                    "end_index": len(text),
                    "title": "Weather news",
                    "url": "https://news.example.cn/2025/weather.html",
                },
            ],
        )

    def code_interpreter_call(self) -> dict[str, Any]:
        return {
            "code": "import math\nprint(sum(i * i for i in range(1, 11)))\nprint(math.pi)\n",
            "container_id": f"cntr_{self.uuid('container').replace('-', '')}",
            "id": self.item_id("ci"),
            "outputs": [{"logs": "385\n3.141592653589793\n", "type": "logs"}],
            "status": "completed",
            "type": "code_interpreter_call",
        }

    def web_extractor_call(self) -> dict[str, Any]:
        return {
            "goal": "提取页面中的发布日期和主要更新内容",
            "id": self.item_id("we"),
            "output": "The page announces version 3.0, released on 2025-05-12, with faster "
            "indexing and a new 中文 tokenizer.",
            "status": "completed",
            "type": "web_extractor_call",
            "urls": ["https://blog.example.com/releases/3.0"],
        }

    def image_results(self, topic: str) -> str:
        return orjson.dumps(
            [
                {
                    "title": f"{topic} {index}",
                    "url": f"https://img.example.com/{index}.jpg",
                    "index": index,
                }
                for index in range(1, 4)
            ]
        ).decode()

    def web_search_image_call(self) -> dict[str, Any]:
        return {
            "arguments": orjson.dumps({"queries": ["西湖 日落", "West Lake sunset"]}).decode(),
            "id": self.item_id("wsi"),
            "name": "web_search_image",
            "output": self.image_results("西湖日落"),
            "status": "completed",
            "type": "web_search_image_call",
        }

    def image_search_call(self) -> dict[str, Any]:
        return {
            "arguments": orjson.dumps({"img_idx": 0, "bbox": [0, 0, 1000, 1000]}).decode(),
            "id": self.item_id("is"),
            "name": "image_search",
            "output": self.image_results("Similar image"),
            "status": "completed",
            "type": "image_search_call",
        }

    def mcp_call(self) -> dict[str, Any]:
        return {
            "arguments": orjson.dumps({"address": "杭州市西湖区", "city": "杭州"}).decode(),
            "id": self.item_id("mcp"),
            "name": "amap-maps-maps_geo",
            "output": orjson.dumps(
                {
                    "results": [
                        {
                            "country": "中国",
                            "province": "浙江省",
                            "city": "杭州市",
                            "location": "120.130396,30.259242",
                        }
                    ]
                }
            ).decode(),
            "server_label": "amap-maps",
            "status": "completed",
            "type": "mcp_call",
        }

    def file_search_call(self) -> dict[str, Any]:
        return {
            "id": self.item_id("fs"),
            "queries": ["退货政策", "return policy days"],
            "results": [
                {
                    "file_id": f"file_{self.uuid('file1').replace('-', '')[:24]}",
                    "filename": "售后服务手册.pdf",
                    "score": 0.8731,
                    "text": "自签收之日起 7 天内可无理由退货。",
                },
                {
                    "file_id": f"file_{self.uuid('file2').replace('-', '')[:24]}",
                    "filename": "returns-policy.md",
                    "score": 0.6412,
                    "text": "Items can be returned within 30 days of delivery.",
                },
            ],
            "status": "completed",
            "type": "file_search_call",
        }

    def gated(self) -> list[dict[str, Any]]:
        """Output items whose include-gated fields appear only for the requested values."""
        on = self.gates.__contains__
        reasoning = self.reasoning()
        if on("reasoning.encrypted_content"):
            reasoning["encrypted_content"] = "gAAAAAB" + hashlib.sha256(self.key).hexdigest() * 4
        file_search = self.file_search_call()
        if not on("file_search_call.results"):
            file_search["results"] = None
        web_search = self.web_search_call()
        if not on("web_search_call.action.sources"):
            del web_search["action"]["sources"]
        code = self.code_interpreter_call()
        if not on("code_interpreter_call.outputs"):
            code["outputs"] = None
        message = self.message("Done: 杭州 25°C, 7-day returns, 385.")
        if on("message.output_text.logprobs"):
            message["content"][0]["logprobs"] = [
                {
                    "token": token,
                    "logprob": -0.01 * (i + 1),
                    "bytes": list(token.encode()),
                    "top_logprobs": [],
                }
                for i, token in enumerate(("Done", ":", " 杭州"))
            ]
        return [reasoning, file_search, web_search, code, message]

    def hologram_call(self) -> dict[str, Any]:
        """An item type no reference documents yet: archivers must keep it anyway."""
        return {
            "id": self.item_id("holo"),
            "type": "hologram_call",
            "status": "completed",
            "projection": {"width": 1920, "height": 1080, "depth": 64, "fps": 59.94},
            "frames": [{"t": 0, "label": "开场 ✨"}, {"t": 1.5, "label": "finale"}],
            "emitter": None,
        }

    # ---- whole bodies --------------------------------------------------------------

    def shape(self, name: str | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]],
                                                 dict[str, dict[str, int]]]:  # fmt: skip
        """Output items, echoed tools and ``usage.x_tools`` for a scenario."""
        if name == "kitchensink":
            return self.kitchensink()
        if name == "big":
            return [self.message(_big_text())], [], {}
        if name == "nul":
            return [self.message(_NUL_TEXT)], [], {}
        if name == "unicode":
            return [self.reasoning(), self.message(_UNICODE_TEXT)], [], {}
        if name == "gated":
            tools: list[dict[str, Any]] = [_FILE_SEARCH_TOOL, {"type": "web_search"}, _CODE_TOOL]
            return self.gated(), tools, {"file_search": {"count": 1}, "web_search": {"count": 1}}
        text = _PLAIN_TEXTS[self.pick(8, len(_PLAIN_TEXTS))]
        match self.pick(0, 10):
            case 0:
                return [self.message(text)], [], {}
            case 1:
                return [self.reasoning(), self.message(text)], [], {}
            case 2:
                return [self.function_call()], [_FUNCTION_TOOL], {}
            case 3:
                items = [self.web_search_call(), self.cited_message()]
                return items, [{"type": "web_search"}], {"web_search": {"count": 1}}
            case 4:
                items = [self.code_interpreter_call(), self.message("The sum is 385.")]
                tools = [{"type": "code_interpreter", "container": {"type": "auto"}}]
                return items, tools, {"code_interpreter": {"count": 1}}
            case 5:
                items = [self.web_search_call(), self.web_extractor_call(), self.message(text)]
                tools = [{"type": "web_search"}, {"type": "web_extractor"}]
                return items, tools, {"web_search": {"count": 1}, "web_extractor": {"count": 1}}
            case 6:
                items = [self.web_search_image_call(), self.message("找到 3 张西湖日落的图片。🌅")]
                return items, [{"type": "web_search_image"}], {"web_search_image": {"count": 1}}
            case 7:
                items = [self.image_search_call(), self.message("Here are 3 similar images.")]
                return items, [{"type": "image_search"}], {"image_search": {"count": 1}}
            case 8:
                items = [self.mcp_call(), self.message("西湖区的坐标是 120.13, 30.26。")]
                return items, [_MCP_TOOL], {"mcp": {"count": 1}}
            case _:
                items = [self.file_search_call(), self.message("可在签收后 7 天内无理由退货。")]
                return items, [_FILE_SEARCH_TOOL], {"file_search": {"count": 1}}

    def kitchensink(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]],
                                   dict[str, dict[str, int]]]:  # fmt: skip
        items = [
            self.reasoning(),
            self.web_search_call(),
            self.web_extractor_call(),
            self.web_search_image_call(),
            self.image_search_call(),
            self.code_interpreter_call(),
            self.mcp_call(),
            self.file_search_call(),
            self.function_call(),
            self.hologram_call(),
            self.cited_message(),
        ]
        tools: list[dict[str, Any]] = [
            {"type": "web_search"}, {"type": "web_extractor"}, {"type": "web_search_image"},
            {"type": "image_search"}, {"type": "code_interpreter", "container": {"type": "auto"}},
            _MCP_TOOL, _FILE_SEARCH_TOOL, _FUNCTION_TOOL,
        ]  # fmt: skip
        x_tools = {
            name: {"count": 1}
            for name in ("web_search", "web_extractor", "web_search_image", "image_search",
                         "code_interpreter", "mcp", "file_search")
        }  # fmt: skip
        return items, tools, x_tools

    def usage(self, output: list[dict[str, Any]], x_tools: dict[str, Any]) -> dict[str, Any]:
        input_tokens = 20 + self.pick(16, 4000)
        output_tokens = 8 + self.pick(28, 1200)
        for item in output:
            for part in item.get("content") or ():
                output_tokens += len(part.get("text", "")) // 4
        has_reasoning = any(item["type"] == "reasoning" for item in output)
        reasoning_tokens = output_tokens // 2 if has_reasoning else 0
        cached_tokens = (input_tokens // 64) * 64 if self.pick(40, 3) == 0 else 0
        total = input_tokens + output_tokens
        detail: dict[str, Any] = {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "total_tokens": total,
        }
        if reasoning_tokens:
            detail["output_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
        detail["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
        detail["x_billing_type"] = "response_api"
        usage: dict[str, Any] = {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": cached_tokens},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
            "total_tokens": total,
            "x_details": [detail],
        }
        if x_tools:
            usage["x_tools"] = x_tools
        return usage

    def build(self, name: str | None, phase: str) -> dict[str, Any]:
        """The Response object for a scenario in a lifecycle phase."""
        output, tools, x_tools = self.shape(name)
        created_at = 1_750_000_000 + self.pick(0, 40_000_000)
        done = phase == "completed"
        body: dict[str, Any] = {
            "background": False,
            "completed_at": created_at + 1 + self.pick(12, 90) if done else None,
            "created_at": created_at,
            "error": None,
            "frequency_penalty": 0.0,
            "id": f"resp_{self.uuid('mismatch')}" if name == "mismatch" else self.response_id,
            "incomplete_details": None,
            "instructions": None,
            "metadata": {},
            "model": _MODELS[self.pick(4, len(_MODELS))],
            "object": "response",
            "output": output if done else _partial(output, phase),
            "parallel_tool_calls": True,
            "presence_penalty": 0.0,
            "previous_response_id": None,
            "service_tier": "default",
            "status": phase,
            "store": True,
            "temperature": 1.0,
            "tool_choice": "auto",
            "tools": tools,
            "top_logprobs": 0,
            "top_p": 1.0,
            "usage": self.usage(output, x_tools) if done else None,
        }
        if name == "kitchensink":
            body["x_hologram_session"] = {"room": "全息-7", "participants": 3, "beta": True}
        return body


_FUNCTION_TOOL: Final = {
    "type": "function",
    "name": "get_current_weather",
    "description": "Get the current weather in a given location",
    "parameters": {
        "type": "object",
        "properties": {
            "location": {"type": "string", "description": "城市名称，例如：杭州市"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["location"],
    },
}
_MCP_TOOL: Final = {
    "type": "mcp",
    "server_label": "amap-maps",
    "server_description": "高德地图 MCP 服务",
    "server_url": "https://mcp.example.com/amap/sse",
}
_FILE_SEARCH_TOOL: Final = {"type": "file_search", "vector_store_ids": ["kb_returns_2025"]}
_CODE_TOOL: Final = {"type": "code_interpreter", "container": {"type": "auto"}}


def _partial(output: list[dict[str, Any]], phase: str) -> list[dict[str, Any]]:
    """Output of an unfinished response: nothing when queued, the first item in progress."""
    if phase == "queued" or not output:
        return []
    first = dict(output[0])
    if "status" in first:
        first["status"] = "in_progress"
    if first.get("content"):
        part = dict(first["content"][0])
        part["text"] = part["text"][: len(part["text"]) // 2]
        first["content"] = [part]
    return [first]


@lru_cache(maxsize=1)
def _big_text() -> str:
    paragraph = (
        "Lorem ipsum dolor sit amet, consectetur adipiscing elit. "
        "大型响应测试：这一段文字会重复很多次，用来检验存档器能否处理数兆字节的正文。"
        "Émojis 📦🧪🚚 and accents àéîõü keep it honest.\n"
    )
    return paragraph * (BIG_BODY_BYTES // len(paragraph.encode()))


# --------------------------------------------------------------------------- errors


def _error(message: str, type_: str, code: str | None = None) -> bytes:
    error: dict[str, Any] = {"code": code} if code is not None else {}
    error.update(message=message, type=type_)
    return orjson.dumps({"error": error})


def _not_found_body(response_id: str) -> bytes:
    return _error(f"Response with id '{response_id}' not found.", "InvalidParameter")


INVALID_KEY_BODY: Final = orjson.dumps(
    {"error": {"message": "Incorrect API key provided.", "type": "invalid_request_error",
               "code": "invalid_api_key"}}
)  # fmt: skip
THROTTLED_BODY: Final = _error(
    "Requests rate limit exceeded, please try again later.",
    "Throttling.RateQuota",
    "Throttling.RateQuota",
)
QUOTA_BODY: Final = orjson.dumps(
    {"error": {"message": "You exceeded your current quota, please check your plan and "
               "billing details.", "type": "insufficient_quota", "code": "insufficient_quota"}}
)  # fmt: skip
SERVER_ERROR_BODY: Final = _error(
    "An internal error has occured, please try again later or contact service support.",
    "InternalError",
    "InternalError",
)
UNAVAILABLE_BODY: Final = _error(
    "The service is temporarily unavailable, please try again later.",
    "ServiceUnavailable",
    "ServiceUnavailable",
)
BAD_REQUEST_BODY: Final = _error(
    "The request is malformed: parameter 'response_id' is invalid.",
    "InvalidParameter",
    "InvalidParameter",
)
FORBIDDEN_BODY: Final = _error(
    "Access to model denied. Please make sure you are eligible for using the model.",
    "AccessDenied.Unpurchased",
    "AccessDenied.Unpurchased",
)
ARREARAGE_BODY: Final = _error(
    "Access denied, please make sure your account is in good standing.",
    "Arrearage",
    "Arrearage",
)


def _retry_after_headers(retry_after_s: float) -> dict[str, str]:
    seconds = f"{retry_after_s:.3f}".rstrip("0").rstrip(".") or "0"
    return {"retry-after": seconds, "retry-after-ms": str(round(retry_after_s * 1000))}


def _json(status: int, body: bytes, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=body, content_type=JSON_CONTENT_TYPE, headers=headers)


def load_bodies(bodies_dir: Path) -> dict[str, bytes]:
    """Read every ``*.json`` file in ``bodies_dir`` that is an object with a string ``id``.

    Args:
        bodies_dir: Directory of response bodies (not searched recursively).

    Returns:
        The files' bytes, exactly as on disk, keyed by their top-level ``id``. The first
        file in name order wins a duplicate ID; other files are skipped.
    """
    bodies: dict[str, bytes] = {}
    for path in sorted(bodies_dir.glob("*.json")):
        raw = path.read_bytes()
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if isinstance(parsed, dict) and isinstance(parsed.get("id"), str):
            bodies.setdefault(parsed["id"], raw)
    return bodies


# --------------------------------------------------------------------------- input items

INPUT_PAGE_DEFAULT: Final = 20
INPUT_PAGE_MAX: Final = 100
_INPUT_TEXTS: Final = (
    "What is the weather in Hangzhou today?",
    "请用三句话总结这篇文章。",
    "Write a haiku about archives 📚",
    "Look up the latest exchange rate for CNY/EUR.",
    "Explain the difference between TCP and UDP.",
)


_PIXEL_PNG: Final = (
    "data:image/png;base64,"
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="
)


def input_items_for(response_id: str, include: Iterable[str] = ()) -> tuple[dict[str, Any], ...]:
    """The input items the mock serves for an ID, oldest first (deterministic).

    ``manyinputs`` IDs have 230 items (three pages of 100); ``gated`` IDs a user message
    with an ``input_image`` and a ``computer_call_output``, whose ``image_url`` fields
    appear only for their ``include`` values; others 1-4: a system message, user
    messages with ``input_text`` parts, and a function call output.
    """
    name, count = _scenario(response_id)
    if name == "gated":
        return _gated_input_items(response_id, frozenset(include) & frozenset(GATED_INCLUDE))
    if name == "chain":
        return _chain_input_items(response_id.split("_", 2)[2], count or 1)
    return _input_items(response_id)


def _chain_input_items(conversation: str, turn: int) -> tuple[dict[str, Any], ...]:
    """Turns 1..turn of a conversation: user messages and, before the last, the answers."""
    items: list[dict[str, Any]] = []
    for t in range(1, turn + 1):
        stem = hashlib.sha256(f"{conversation}/{t}".encode()).hexdigest()
        text = _INPUT_TEXTS[t % len(_INPUT_TEXTS)]
        items.append(
            {
                "id": f"msg_{stem[:24]}",
                "type": "message",
                "role": "user",
                "status": "completed",
                "content": [{"type": "input_text", "text": f"{text} (turn {t} of {conversation})"}],
            }
        )
        if t < turn:
            answer = _PLAIN_TEXTS[t % len(_PLAIN_TEXTS)]
            items.append(
                {
                    "id": f"msg_{stem[24:48]}",
                    "type": "message",
                    "role": "assistant",
                    "status": "completed",
                    "content": [{"type": "output_text", "text": f"{answer} (turn {t})", "annotations": []}],
                }
            )
    return tuple(items)


@lru_cache(maxsize=64)
def _gated_input_items(response_id: str, gates: frozenset[str]) -> tuple[dict[str, Any], ...]:
    stem = hashlib.sha256(response_id.encode()).hexdigest()
    image: dict[str, Any] = {"type": "input_image", "detail": "auto", "file_id": None}
    if "message.input_image.image_url" in gates:
        image["image_url"] = _PIXEL_PNG
    screenshot: dict[str, Any] = {"type": "computer_screenshot", "file_id": f"file_{stem[:24]}"}
    if "computer_call_output.output.image_url" in gates:
        screenshot["image_url"] = _PIXEL_PNG
    return (
        {
            "id": f"msg_{stem[:24]}",
            "type": "message",
            "role": "user",
            "status": "completed",
            "content": [{"type": "input_text", "text": "What is in this picture?"}, image],
        },
        {
            "id": f"cuo_{stem[24:48]}",
            "type": "computer_call_output",
            "status": "completed",
            "call_id": f"call_{stem[:12]}",
            "output": screenshot,
        },
    )


@lru_cache(maxsize=4096)
def _input_items(response_id: str) -> tuple[dict[str, Any], ...]:
    name, _ = _scenario(response_id)
    digest = hashlib.sha256(response_id.encode()).digest()
    count = 230 if name == "manyinputs" else 1 + digest[0] % 4
    items: list[dict[str, Any]] = []
    for i in range(count):
        item_id = f"msg_{hashlib.sha256(f'{response_id}/{i}'.encode()).hexdigest()[:24]}"
        if i == 0 and count > 2:
            items.append(
                {
                    "id": item_id,
                    "type": "message",
                    "role": "system",
                    "status": "completed",
                    "content": [{"type": "input_text", "text": "You are a helpful assistant."}],
                }
            )
        elif i % 5 == 3:
            items.append(
                {
                    "id": item_id,
                    "type": "function_call_output",
                    "status": "completed",
                    "call_id": f"call_{item_id[4:16]}",
                    "output": '{"temperature": 21}',
                }
            )
        else:
            text = _INPUT_TEXTS[(digest[1] + i) % len(_INPUT_TEXTS)]
            items.append(
                {
                    "id": item_id,
                    "type": "message",
                    "role": "user",
                    "status": "completed",
                    "content": [{"type": "input_text", "text": f"{text} (#{i})"}],
                }
            )
    return tuple(items)


def _dashscope_list_fields(response_id: str) -> dict[str, Any]:
    """What DashScope's input-item lists carry besides the page: the response's ID, model
    and creation time in milliseconds (its Response object has it in seconds)."""
    body = orjson.loads(body_for(response_id))
    stem = hashlib.sha256(response_id.encode()).digest()
    millis = int(body.get("created_at", 0)) * 1000 + int.from_bytes(stem[:2], "big") % 1000
    return {"id": response_id, "model": body.get("model"), "created_at": millis}


def _input_items_page(
    response_id: str, query: Any, include: Iterable[str] = (), *, dashscope: bool = False
) -> bytes | None:
    """One page of ``GET /responses/{id}/input_items``, or None for a bad query."""
    items = list(input_items_for(response_id, include))
    try:
        limit = int(query.get("limit", INPUT_PAGE_DEFAULT))
    except ValueError:
        return None
    if not 1 <= limit <= INPUT_PAGE_MAX:
        return None
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        return None
    if order == "desc":
        items.reverse()
    after = query.get("after")
    if after:
        ids = [item["id"] for item in items]
        if after not in ids:
            return None
        items = items[ids.index(after) + 1 :]
    page = items[:limit]
    listed: dict[str, Any] = {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(items) > limit,
    }
    if dashscope:
        listed.update(_dashscope_list_fields(response_id))
    return orjson.dumps(listed)


# --------------------------------------------------------------------------- server


class _MockApi:
    """Request handlers and the state they share (one per application)."""

    def __init__(self, config: MockConfig) -> None:
        self.config = config
        self.dashscope = "/compatible-mode/" in _normalized_prefix(config.prefix) + "/"
        self.stats = MockStats()
        self.jitter_rng = random.Random(config.seed)
        self.bodies = load_bodies(config.bodies_dir) if config.bodies_dir else {}
        self.closing = asyncio.Event()
        self.expected_auth = f"Bearer {config.api_key}".encode() if config.api_key else None
        self.retry_headers = _retry_after_headers(config.retry_after_s)

    async def get_response(self, request: web.Request) -> web.StreamResponse:
        """``GET {prefix}/responses/{response_id}``."""
        stats = self.stats
        # aiohttp already unquoted the path segment (%3A -> ":", %2F stays inside it);
        # unquoting again would corrupt IDs that contain "%".
        response_id = request.match_info["response_id"]
        fetch_number = stats.requests_by_id.get(response_id, 0) + 1
        stats.requests_by_id[response_id] = fetch_number
        stats.requests_total += 1
        stats.arrivals.append(time.monotonic())
        stats.in_flight += 1
        if stats.in_flight > stats.max_in_flight:
            stats.max_in_flight = stats.in_flight
        try:
            await self.sleep_latency()
            response = await self.answer(request, response_id, fetch_number)
            if response is None:
                stats.dropped_total += 1
                # Nothing may be written: aiohttp sees a closed transport and stays quiet.
                return web.Response(status=499)
            key = str(response.status)
            stats.status_counts[key] = stats.status_counts.get(key, 0) + 1
            return response
        finally:
            stats.in_flight -= 1

    async def get_input_items(self, request: web.Request) -> web.StreamResponse:
        """``GET {prefix}/responses/{response_id}/input_items`` (paginated like OpenAI's)."""
        stats = self.stats
        response_id = request.match_info["response_id"]
        number = stats.input_items_by_id.get(response_id, 0) + 1
        stats.input_items_by_id[response_id] = number
        stats.input_items_total += 1
        stats.arrivals.append(time.monotonic())
        stats.in_flight += 1
        if stats.in_flight > stats.max_in_flight:
            stats.max_in_flight = stats.in_flight
        try:
            await self.sleep_latency()
            if not self.authorized(request):
                return _json(401, INVALID_KEY_BODY)
            name, count = _scenario(response_id)
            if name == "notfound" and _within(count, stats.requests_by_id.get(response_id, 0)):
                return _json(404, _not_found_body(response_id))
            if name == "noinputs":  # a provider without the input_items endpoint
                return _json(404, _error("Not found.", "NotFound"))
            if name == "inputflaky" and _within(count, number):
                return _json(503, _error("The service is temporarily unavailable.", "ServiceUnavailable"))
            include = self.requested_include(request, response_id)
            rejected = self.include_rejection(include)
            if rejected is not None:
                return rejected
            page = _input_items_page(response_id, request.query, include, dashscope=self.dashscope)
            if page is None:
                return _json(
                    400, _error("Invalid pagination parameters.", "InvalidParameter", "InvalidParameter")
                )
            return _json(200, page)
        finally:
            stats.in_flight -= 1

    async def sleep_latency(self) -> None:
        config = self.config
        if config.latency_ms <= 0 and config.jitter_ms <= 0:
            return
        jitter = self.jitter_rng.uniform(-config.jitter_ms, config.jitter_ms)
        delay_ms = config.latency_ms + jitter
        if delay_ms > 0:
            await asyncio.sleep(delay_ms / 1000)

    def requested_include(self, request: web.Request, response_id: str) -> list[str]:
        """The request's ``include[]`` values (recorded in the stats)."""
        include = [*request.query.getall("include[]", []), *request.query.getall("include", [])]
        if include:
            records = self.stats.include_by_id.setdefault(response_id, [])
            if len(records) < INCLUDE_RECORDS:
                records.append(include)
        return include

    def include_rejection(self, include: list[str]) -> web.Response | None:
        """OpenAI's 400 for the first requested value in ``reject_include``, or None."""
        for index, value in enumerate(include):
            if value in self.config.reject_include:
                supported = ", ".join(f"'{v}'" for v in GATED_INCLUDE if v not in self.config.reject_include)
                error = {
                    "message": f"Invalid value: '{value}'. Supported values are: {supported}.",
                    "type": "invalid_request_error",
                    "param": f"include[{index}]",
                    "code": "invalid_value",
                }
                return _json(400, orjson.dumps({"error": error}))
        return None

    def authorized(self, request: web.Request) -> bool:
        if self.expected_auth is None:
            return True
        presented = request.headers.get("Authorization", "").encode("utf-8", "surrogatepass")
        return hmac.compare_digest(presented, self.expected_auth)

    async def answer(self, request: web.Request, response_id: str, fetch_number: int) -> web.Response | None:
        """The answer to one fetch, or None when the connection was dropped instead."""
        if not self.authorized(request):
            return _json(401, INVALID_KEY_BODY)
        include = self.requested_include(request, response_id)
        rejected = self.include_rejection(include)
        if rejected is not None:
            return rejected
        config = self.config
        stored = self.bodies.get(response_id)
        if stored is not None:
            return self.fault(response_id, fetch_number) or _json(200, stored)
        if config.bodies_only:
            return _json(404, _not_found_body(response_id))

        name, count = _scenario(response_id)
        if name is None or name == "ok":
            fault = self.fault(response_id, fetch_number)
            if fault is not None:
                return fault
        elif name == "hang":
            if _within(count, fetch_number):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.closing.wait(), config.hang_s)
        elif _within(count, fetch_number):
            early = self.scenario_answer(request, name, response_id)
            if early is not None or name == "reset":
                return early
        body = body_for(response_id, fetch_number, config.seed, include)
        if name == "garbage":
            return web.Response(status=200, body=body, content_type="text/html")
        return _json(200, body)

    def scenario_answer(self, request: web.Request, name: str, response_id: str) -> web.Response | None:
        """The non-200 answer of a scenario while its fault applies (None: a 200)."""
        match name:
            case "notfound":
                return _json(404, _not_found_body(response_id))
            case "flaky":
                return _json(503, UNAVAILABLE_BODY)
            case "ratelimit":
                return _json(429, THROTTLED_BODY, self.retry_headers)
            case "quota":
                return _json(429, QUOTA_BODY)
            case "servererror":
                return _json(500, SERVER_ERROR_BODY)
            case "badrequest":
                return _json(400, BAD_REQUEST_BODY)
            case "unauthorized":
                return _json(401, INVALID_KEY_BODY)
            case "forbidden":
                return _json(403, FORBIDDEN_BODY)
            case "arrearage":
                return _json(400, ARREARAGE_BODY)
            case "reset":
                _drop_connection(request)
                return None
        return None

    def fault(self, response_id: str, fetch_number: int) -> web.Response | None:
        """A transient fault for ``fail_rate`` of normal fetches, or None."""
        if self.config.fail_rate <= 0:
            return None
        digest = hashlib.blake2b(
            f"{self.config.seed}\x00{response_id}\x00{fetch_number}".encode(), digest_size=8
        ).digest()
        draw = int.from_bytes(digest[:7], "big") / (1 << 56)
        if draw >= self.config.fail_rate:
            return None
        match digest[7] % 3:
            case 0:
                return _json(429, THROTTLED_BODY, self.retry_headers)
            case 1:
                return _json(500, SERVER_ERROR_BODY)
            case _:
                return _json(503, UNAVAILABLE_BODY)

    async def get_stats(self, request: web.Request) -> web.Response:
        """``GET /_mock/stats``."""
        return _json(200, orjson.dumps(self.stats.as_dict()))

    async def post_reset(self, request: web.Request) -> web.Response:
        """``POST /_mock/reset``."""
        self.stats.reset()
        return _json(200, b'{"reset":true}')


def _drop_connection(request: web.Request) -> None:
    """Close the connection so the client sees a disconnect, not an HTTP answer."""
    transport = request.transport
    if transport is not None:
        transport.abort()


_API_KEY: Final = web.AppKey("archiver_mock_api", _MockApi)


def _normalized_prefix(prefix: str) -> str:
    stripped = prefix.strip("/")
    return f"/{stripped}" if stripped else ""


def build_app(config: MockConfig) -> web.Application:
    """The mock Responses API as an aiohttp application.

    Args:
        config: Scenario knobs; ``bodies_dir`` is read here, once.
    """
    api = _MockApi(config)
    app = web.Application()
    app[_API_KEY] = api
    prefix = _normalized_prefix(config.prefix)
    app.router.add_get(f"{prefix}/responses/{{response_id}}", api.get_response)
    app.router.add_get(f"{prefix}/responses/{{response_id}}/input_items", api.get_input_items)
    app.router.add_get("/_mock/stats", api.get_stats)
    app.router.add_post("/_mock/reset", api.post_reset)

    async def release_hangs(app: web.Application) -> None:
        api.closing.set()

    app.on_shutdown.append(release_hangs)
    return app


def _base_url(host: str, port: int, prefix: str) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}{_normalized_prefix(prefix)}"


class MockServer:
    """A running mock server. Use ``async with`` or call ``close()``."""

    def __init__(self, runner: web.AppRunner, base_url: str, stats: MockStats) -> None:
        self._runner = runner
        self.base_url = base_url
        self.stats = stats

    async def close(self) -> None:
        """Stop listening, release hung requests and close every connection."""
        await self._runner.cleanup()

    async def __aenter__(self) -> MockServer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


async def _start(config: MockConfig, host: str, port: int) -> tuple[web.AppRunner, str, MockStats]:
    app = build_app(config)
    # handler_cancellation: a client that gives up on a hang must not leave the handler
    # sleeping (and counted in flight) for hang_s.
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_port = runner.addresses[0][1]
    return runner, _base_url(host, bound_port, config.prefix), app[_API_KEY].stats


async def start_mock_server(
    config: MockConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> MockServer:
    """Start the mock server in the running event loop.

    Args:
        config: Scenario knobs (defaults: no latency, no key, no faults).
        host: Interface to listen on.
        port: TCP port; 0 picks a free one (see ``MockServer.base_url``).
    """
    runner, base_url, stats = await _start(config or MockConfig(), host, port)
    return MockServer(runner, base_url, stats)


async def serve_forever(
    config: MockConfig, host: str, port: int, ready: Callable[[str], None] | None = None
) -> None:
    """Run the mock server until cancelled (the ``archiver mock-server`` command).

    Args:
        config: Scenario knobs.
        host: Interface to listen on.
        port: TCP port; 0 picks a free one.
        ready: Called once with the base URL when the server listens.
    """
    runner, base_url, _ = await _start(config, host, port)
    try:
        if ready is not None:
            ready(base_url)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
