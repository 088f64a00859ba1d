"""The bodies the mock Responses API answers with: generated Response objects and files.

A normal ID's hash picks the model, timestamps, token counts and one of ten output shapes
(see :mod:`archiver.mockscenarios` for the scenarios that change the body). Bodies are
serialized once per (ID, fetch phase, seed) with orjson and cached, so the server's hot
path only looks up bytes.
"""

from __future__ import annotations

# Realistic Chinese model output uses fullwidth punctuation (，：！) on purpose.
import hashlib
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any, Final

import orjson

from archiver.errors import ConfigError
from archiver.mockscenarios import lifecycle_phase, scenario_of, within

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
    name, count = scenario_of(response_id)
    if name == "garbage":
        return GARBAGE_BODY
    if name == "big":
        return _render_big(response_id, seed)
    gates = frozenset(include) & frozenset(GATED_INCLUDE) if name == "gated" else frozenset()
    full = _render(response_id, lifecycle_phase(response_id, fetch_number), seed, gates)
    if name == "trunc" and within(count, fetch_number):
        return full[: len(full) // 2]
    return full


@lru_cache(maxsize=32768)
def _render(response_id: str, phase: str, seed: int, gates: frozenset[str] = frozenset()) -> bytes:
    """Serialize a body once; later fetches of the same (ID, phase, seed, gates) reuse the bytes."""
    name, _ = scenario_of(response_id)
    return orjson.dumps(_BodyBuilder(response_id, seed, gates).build(name, phase))


@lru_cache(maxsize=4)  # 4 MB each: kept out of the large cache above
def _render_big(response_id: str, seed: int) -> bytes:
    return orjson.dumps(_BodyBuilder(response_id, seed).build("big", "completed"))


_MODELS: Final = ("qwen-plus", "qwen3-max", "qwen-flash", "qwen-plus-latest", "qwen3.5-plus")
PLAIN_TEXTS: Final = (
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
        text = PLAIN_TEXTS[self.pick(8, len(PLAIN_TEXTS))]
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


def load_bodies(bodies_dir: Path) -> dict[str, bytes]:
    """Read every ``*.json`` file in ``bodies_dir`` that is an object with a string ``id``.

    Args:
        bodies_dir: Directory of response bodies (not searched recursively).

    Returns:
        The files' bytes, exactly as on disk, keyed by their top-level ``id``. The first
        file in name order wins a duplicate ID; other files are skipped.

    Raises:
        ConfigError: ``bodies_dir`` is not a directory or holds no body: a mistyped path
            would otherwise answer 404 for every ID, and a run would end them ``not_found``.
    """
    if not bodies_dir.is_dir():
        what = "does not exist" if not bodies_dir.exists() else "is not a directory"
        raise ConfigError(f"bodies directory {bodies_dir} {what}")
    bodies: dict[str, bytes] = {}
    for path in sorted(bodies_dir.glob("*.json")):
        raw = path.read_bytes()
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if isinstance(parsed, dict) and isinstance(parsed.get("id"), str):
            bodies.setdefault(parsed["id"], raw)
    if not bodies:
        raise ConfigError(
            f"bodies directory {bodies_dir} holds no response body "
            "(*.json files, each a JSON object with an id)"
        )
    return bodies
