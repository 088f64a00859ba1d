"""normalize(): a parsed Response body -> rows for the archive tables."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from archiver.errors import NormalizationError
from archiver.normalize import (
    OPAQUE_KEY,
    NormalizedResponse,
    is_opaque,
    normalize,
    output_text,
    without_opaque,
)
from archiver.schema import CHILD_STORE_COLUMNS, CHILD_TABLES, STORE_COLUMNS, responses
from tests.projection import assert_projection, parse_body, projected

CORPUS_DIR = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "responses"
CORPUS_FILES = sorted(CORPUS_DIR.glob("*.json"))

RESPONSE_COLUMNS = {c.name for c in responses.columns} - STORE_COLUMNS
CHILD_COLUMNS = {t.name: {c.name for c in t.columns} - CHILD_STORE_COLUMNS for t in CHILD_TABLES}


def load(path: Path) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(path.read_bytes())
    return body


def assert_row_shapes(result: NormalizedResponse, response_id: str) -> None:
    """Every row has exactly its table's columns; child rows belong to the response."""
    assert set(result.response) == RESPONSE_COLUMNS
    assert result.response["id"] == response_id
    assert set(result.children) == set(CHILD_COLUMNS)
    for table, rows in result.children.items():
        keys = set()
        for row in rows:
            assert set(row) == CHILD_COLUMNS[table], table
            assert row["response_id"] == response_id
            pk = tuple(row[c.name] for c in _table(table).primary_key.columns)
            assert pk not in keys, f"duplicate primary key {pk} in {table}"
            keys.add(pk)


def _table(name: str) -> Any:
    return next(t for t in CHILD_TABLES if t.name == name)


def rows(result: NormalizedResponse, table: str) -> list[dict[str, Any]]:
    return result.children[table]


def only(result: NormalizedResponse, table: str) -> dict[str, Any]:
    (row,) = result.children[table]
    return row


# --- expectations computed independently from the body -------------------------------


def objects(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def expected_counts(body: dict[str, Any]) -> dict[str, int]:
    items = objects(body.get("output"))
    parts = [p for item in items for p in objects(item.get("content"))]
    by_type: Callable[[str], list[dict[str, Any]]] = lambda t: [  # noqa: E731
        i for i in items if i.get("type") == t
    ]
    actions = [i["action"] for i in by_type("web_search_call") if isinstance(i.get("action"), dict)]
    file_searches = by_type("file_search_call")
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    tool_usage = body.get("tool_usage") if isinstance(body.get("tool_usage"), dict) else {}
    return {
        "output_items": len(listed(body.get("output"))),
        "content_parts": sum(len(listed(i.get("content"))) for i in items),
        "annotations": sum(len(listed(p.get("annotations"))) for p in parts),
        "reasoning_summaries": sum(len(listed(i.get("summary"))) for i in by_type("reasoning")),
        "web_search_actions": len(actions),
        "web_search_sources": sum(len(listed(a.get("sources"))) for a in actions),
        "code_interpreter_outputs": sum(
            len(listed(i.get("outputs"))) for i in by_type("code_interpreter_call")
        ),
        "mcp_tools": sum(len(listed(i.get("tools"))) for i in by_type("mcp_list_tools")),
        "file_search_queries": sum(len(listed(i.get("queries"))) for i in file_searches),
        "file_search_results": sum(len(listed(i.get("results"))) for i in file_searches),
        "billing_details": len(listed(usage.get("x_details"))),
        "tool_usage": len(tool_usage)
        + len(usage.get("x_tools") or {})
        + len(usage.get("server_side_tool_usage_details") or {}),
    }


def sdk_output_text(body: dict[str, Any]) -> str:
    """What the OpenAI SDKs' ``response.output_text`` returns."""
    return "".join(
        part["text"]
        for item in body["output"]
        if item.get("type") == "message"
        for part in item.get("content") or []
        if part.get("type") == "output_text"
    )


# --- the corpus -------------------------------------------------------------------------


def test_corpus_is_there() -> None:
    index_lines = (CORPUS_DIR / "INDEX.tsv").read_text().splitlines()
    assert len(CORPUS_FILES) == len(index_lines) - 1 == 150


@pytest.mark.parametrize("path", CORPUS_FILES, ids=[p.name for p in CORPUS_FILES])
def test_corpus_body(path: Path) -> None:
    raw = path.read_bytes()
    body = parse_body(raw)
    pristine = copy.deepcopy(body)
    result = normalize(body)
    assert body == pristine, "normalize must not modify the body"
    assert_row_shapes(result, body["id"])
    row = result.response

    # every field reachable from a column, extra, or (opaque payloads) raw; nothing whole twice
    assert_projection(body, projected(result))

    # one output_items row per element
    items = rows(result, "output_items")
    assert [r["position"] for r in items] == list(range(len(body["output"])))
    for r, item in zip(items, body["output"], strict=True):
        assert r["type"] == item["type"]
        assert r["id"] == item.get("id")
        assert r["status"] == (item.get("status") if isinstance(item.get("status"), str) else None)
        if isinstance(item.get("arguments"), str):
            assert r["arguments"] == item["arguments"]
        elif "arguments" in item and item["arguments"] is not None:
            assert json.loads(r["arguments"]) == item["arguments"]
        for key in r["extra"] or {}:
            assert key in item and key not in ("id", "type"), key
            assert not (key == "content" and isinstance(item[key], list))

    # child row counts match what the body holds
    for table, count in expected_counts(body).items():
        assert len(rows(result, table)) == count, table

    # content parts (message and reasoning) and annotations
    parts = [
        (pos, ppos, part)
        for pos, item in enumerate(body["output"])
        for ppos, part in enumerate(listed(item.get("content")))
    ]
    for r, (pos, ppos, part) in zip(rows(result, "content_parts"), parts, strict=True):
        assert (r["item_position"], r["position"]) == (pos, ppos)
        assert r["type"] == part["type"]
        assert r["text"] == part.get("text")
        assert r["logprobs"] == part.get("logprobs")
        assert set(r["extra"] or {}) <= set(part) - {"type", "text", "annotations", "logprobs"}
    annotations = [a for _, _, part in parts for a in listed(part.get("annotations"))]
    assert len(rows(result, "annotations")) == len(annotations)
    for r, annotation in zip(rows(result, "annotations"), annotations, strict=True):
        assert r["type"] == annotation["type"]
        assert r["url"] == annotation.get("url")
        assert r["start_index"] == annotation.get("start_index")
        assert r["file_id"] == annotation.get("file_id")

    # usage columns equal the body's values; what they do not take is in extra.usage
    usage = body.get("usage")
    if isinstance(usage, dict):
        assert row["input_tokens"] == usage.get("input_tokens")
        assert row["output_tokens"] == usage.get("output_tokens")
        assert row["total_tokens"] == usage.get("total_tokens")
        assert row["cached_tokens"] == usage["input_tokens_details"].get("cached_tokens")
        assert row["reasoning_tokens"] == usage["output_tokens_details"].get("reasoning_tokens")
        rest = (row["extra"] or {}).get("usage", {})
        assert set(rest) <= set(usage) - {"input_tokens", "output_tokens", "total_tokens", "x_details"}
    else:
        for column in ("input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens"):
            assert row[column] is None

    # every top-level key is a column, child rows, or kept in `extra`
    extra = row["extra"] or {}
    for key, value in body.items():
        if key in ("output", "usage", "tool_usage"):
            continue
        if key in extra:
            assert extra[key] == without_opaque(value)
        elif key == "tools":  # stored once per distinct value, in tool_sets
            assert result.tools == without_opaque(value)
        else:
            assert key in RESPONSE_COLUMNS, key
            if key not in ("created_at", "completed_at"):
                assert row[key] == without_opaque(value), key
    assert set(extra) <= set(body)

    assert row["created_at"] == datetime.fromtimestamp(body["created_at"], UTC)
    if isinstance(body.get("completed_at"), (int, float)):
        assert row["completed_at"] == datetime.fromtimestamp(body["completed_at"], UTC)
    else:
        assert row["completed_at"] is None
    assert row["status"] == body["status"]
    assert row["model"] == body["model"]
    assert output_text(result.children) == sdk_output_text(body)


def test_corpus_opaque_payloads_stay_in_raw() -> None:
    """Image results, encrypted reasoning: a stub with length and SHA-256, nothing more."""
    stubs = 0
    for path in CORPUS_FILES:
        body = parse_body(path.read_bytes())
        result = normalize(body)
        for item, row in zip(body["output"], rows(result, "output_items"), strict=True):
            for key, value in item.items():
                if isinstance(value, str) and is_opaque(value):
                    stub = row["extra"][key][OPAQUE_KEY]
                    assert stub == {
                        "length": len(value),
                        "sha256": hashlib.sha256(value.encode()).hexdigest(),
                    }
                    stubs += 1
    assert stubs >= 20  # 3 image results and ~20 encrypted reasoning contents in the corpus


def test_corpus_top_level_output_text_kept_in_extra() -> None:
    # Three OpenAI bodies carry the SDK's "output_text": "" although their message says
    # "4": the column is computed, the body's value survives in extra.
    body = load(CORPUS_DIR / "pydantic-ai__032.json")
    result = normalize(body)
    assert body["output_text"] == ""
    assert output_text(result.children) == "4"
    assert result.response["extra"]["output_text"] == ""


def test_corpus_web_search_sources() -> None:
    body = load(CORPUS_DIR / "vercel-ai__026.json")
    result = normalize(body)
    actions = rows(result, "web_search_actions")
    assert {a["type"] for a in actions} == {"search", "open_page", "find_in_page"}
    find = next(a for a in actions if a["type"] == "find_in_page")
    assert find["pattern"] == body["output"][find["item_position"]]["action"]["pattern"]
    assert find["url"].startswith("https://")
    first = body["output"][actions[0]["item_position"]]["action"]
    sources = [
        s for s in rows(result, "web_search_sources") if s["item_position"] == actions[0]["item_position"]
    ]
    assert [s["url"] for s in sources] == [s["url"] for s in first["sources"]]
    assert all(s["type"] == "url" for s in sources)


def test_corpus_openai_tool_usage() -> None:
    body = next(b for b in map(load, CORPUS_FILES) if isinstance(b.get("tool_usage"), dict))
    result = normalize(body)
    by_tool = {r["tool"]: r for r in rows(result, "tool_usage") if r["source"] == "tool_usage"}
    assert set(by_tool) == set(body["tool_usage"])
    assert by_tool["web_search"]["count"] == body["tool_usage"]["web_search"]["num_requests"]
    assert by_tool["image_gen"]["total_tokens"] == body["tool_usage"]["image_gen"]["total_tokens"]
    assert by_tool["image_gen"]["extra"] == {
        k: v
        for k, v in body["tool_usage"]["image_gen"].items()
        if k not in ("input_tokens", "output_tokens", "total_tokens")
    }
    assert "tool_usage" not in (result.response["extra"] or {})


def test_corpus_dashscope_body() -> None:
    body = load(CORPUS_DIR / "dashscope-qwen__001.json")
    result = normalize(body)
    assert result.response["reasoning_tokens"] == 33
    summary = only(result, "reasoning_summaries")
    assert summary["type"] == "summary_text"
    assert summary["text"].startswith("The user is asking")
    # reasoning item with "content": null and "status": null
    reasoning = rows(result, "output_items")[0]
    assert reasoning["type"] == "reasoning"
    assert reasoning["status"] is None
    billing = only(result, "billing_details")
    assert billing == {
        "response_id": body["id"],
        "position": 0,
        "x_billing_type": "response_api",
        "input_tokens": 100,
        "output_tokens": 46,
        "total_tokens": 146,
        "cached_tokens": 0,
        "reasoning_tokens": 33,
        "extra": None,
    }
    assert output_text(result.children) == "The capital of France is **Paris**."
    assert result.response["extra"] is None


# --- hand-written bodies for every output item type in the DashScope reference ----------

RESPONSE_ID = "resp_801bc2c4-93d9-910f-b35d-5274f5a737c1"


def dashscope_body(*output: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """A DashScope-shaped body, as in /work/shared/api/retrieve-response.txt."""
    body: dict[str, Any] = {
        "background": False,
        "completed_at": 1778676420,
        "created_at": 1778676418,
        "frequency_penalty": 0.0,
        "id": RESPONSE_ID,
        "metadata": {},
        "model": "qwen3-max-2026-01-23",
        "object": "response",
        "output": list(output),
        "parallel_tool_calls": True,
        "presence_penalty": 0.0,
        "service_tier": "default",
        "status": "completed",
        "store": True,
        "temperature": 1.0,
        "tool_choice": "auto",
        "tools": [{"type": "web_search"}, {"type": "web_extractor"}, {"type": "code_interpreter"}],
        "top_logprobs": 0,
        "top_p": 1.0,
        "usage": {
            "input_tokens": 5120,
            "input_tokens_details": {"cached_tokens": 1024},
            "output_tokens": 830,
            "output_tokens_details": {"reasoning_tokens": 412},
            "total_tokens": 5950,
            "x_details": [
                {
                    "input_tokens": 5120,
                    "output_tokens": 830,
                    "prompt_tokens_details": {"cached_tokens": 1024},
                    "total_tokens": 5950,
                    "x_billing_type": "response_api",
                }
            ],
            "x_tools": {
                "web_search": {"count": 2},
                "web_extractor": {"count": 1},
                "code_interpreter": {"count": 1},
            },
        },
    }
    body.update(overrides)
    return body


MESSAGE = {
    "content": [
        {
            "annotations": [
                {
                    "type": "url_citation",
                    "url": "https://www.alibabacloud.com/help/en/model-studio/code-interpreter",
                    "title": "Code interpreter - Alibaba Cloud Model Studio",
                    "start_index": 4,
                    "end_index": 20,
                }
            ],
            "text": "The code interpreter runs Python in a sandbox.",
            "type": "output_text",
        },
        {"annotations": [], "text": " It keeps state per container.", "type": "output_text"},
    ],
    "id": "msg_8c54756c-9b65-4a95-81d7-4276d91406db",
    "role": "assistant",
    "status": "completed",
    "type": "message",
}

REASONING = {
    "id": "msg_fbe10bf7-9bd2-4257-a9f5-42c541f4e05e",
    "type": "reasoning",
    "summary": [
        {"type": "summary_text", "text": "The user wants a summary of a documentation page."},
        {"type": "summary_text", "text": "I should search, then extract the page."},
    ],
    "content": [{"type": "reasoning_text", "text": "Search first, then read the page."}],
}

FUNCTION_CALL = {
    "arguments": '{"location": "Hangzhou", "unit": "celsius"}',
    "call_id": "call_9f1c4c1f3c2e4f6a8b0d2e",
    "id": "fc_3a1b2c3d-4e5f-6789-abcd-ef0123456789",
    "name": "get_current_weather",
    "status": "completed",
    "type": "function_call",
}

WEB_SEARCH_CALL = {
    "action": {
        "query": "Alibaba Cloud Model Studio code interpreter",
        "type": "search",
        "sources": [
            {
                "type": "url",
                "url": "https://www.alibabacloud.com/help/en/model-studio/code-interpreter",
            },
            {"type": "url", "url": "https://help.aliyun.com/zh/model-studio/code-interpreter"},
        ],
    },
    "id": "ws_2c8e7d2b-1a4f-4c55-9b7e-0f7b1b2a9c11",
    "status": "completed",
    "type": "web_search_call",
}

CODE_INTERPRETER_CALL = {
    "code": "import math\nprint(math.sqrt(2))",
    "container_id": "ctr_5b0e4d6c-71a2-4b1f-9e33-8f2d4c6a0b17",
    "id": "ci_0d4a7b6e-2f31-4c9a-8e5d-1b2c3d4e5f60",
    "outputs": [{"type": "logs", "logs": "1.4142135623730951\n"}],
    "status": "completed",
    "type": "code_interpreter_call",
}

WEB_EXTRACTOR_CALL = {
    "goal": "Find the code interpreter topic and summarize its features",
    "id": "we_7e6d5c4b-3a29-4817-8f6e-5d4c3b2a1908",
    "output": "The code interpreter lets models write and run Python code in a sandbox ...",
    "status": "completed",
    "type": "web_extractor_call",
    "urls": ["https://www.alibabacloud.com/help/en/model-studio/code-interpreter"],
}

IMAGE_RESULTS = [
    {"title": "West Lake at sunset", "url": "https://img.example.cn/westlake-1.jpg", "index": 1},
    {
        "title": "Leifeng Pagoda, Hangzhou",
        "url": "https://img.example.cn/leifeng-2.jpg",
        "index": 2,
    },
]

WEB_SEARCH_IMAGE_CALL = {
    "arguments": '{"queries": ["West Lake sunset", "西湖 日落"]}',
    "id": "wsi_4b3a2918-0f7e-4d6c-b5a4-93827160fedc",
    "name": "web_search_image",
    "output": json.dumps(IMAGE_RESULTS, ensure_ascii=False),
    "status": "completed",
    "type": "web_search_image_call",
}

IMAGE_SEARCH_CALL = {
    "arguments": '{"img_idx": 0, "bbox": [0, 0, 1000, 1000]}',
    "id": "is_9a8b7c6d-5e4f-4a3b-2c1d-0e9f8a7b6c5d",
    "name": "image_search",
    "output": json.dumps(IMAGE_RESULTS[:1]),
    "status": "completed",
    "type": "image_search_call",
}

MCP_CALL = {
    "arguments": '{"address": "杭州市西湖区", "city": "杭州"}',
    "id": "mcp_1f2e3d4c-5b6a-4798-8a9b-0c1d2e3f4a5b",
    "name": "amap-maps-maps_geo",
    "output": '{"results": [{"location": "120.130396,30.259242", "level": "区县"}]}',
    "server_label": "amap-maps",
    "status": "completed",
    "type": "mcp_call",
}

FILE_SEARCH_CALL = {
    "id": "fs_6c5b4a39-2817-4f6e-9d8c-7b6a59483726",
    "queries": ["annual leave policy", "年假 天数"],
    "results": [
        {
            "file_id": "file_a1b2c3d4e5f6",
            "filename": "employee-handbook.pdf",
            "score": 0.8731,
            "text": "Employees with one to ten years of service receive five days of annual leave.",
        },
        {
            "file_id": "file_f6e5d4c3b2a1",
            "filename": "hr-faq.md",
            "score": 0.61,
            "text": "Unused annual leave can be carried over until March.",
            "attributes": {"department": "HR", "year": 2026},
        },
    ],
    "status": "completed",
    "type": "file_search_call",
}

MCP_LIST_TOOLS = {
    "id": "mcpl_0083938b3a28070e0068fabd81d51081a0",
    "server_label": "amap-maps",
    "tools": [
        {
            "name": "maps_geo",
            "description": "Convert an address into coordinates",
            "input_schema": {"type": "object", "properties": {"address": {"type": "string"}}},
            "annotations": None,
        }
    ],
    "type": "mcp_list_tools",
}

ALL_ITEMS = (
    MCP_LIST_TOOLS,
    REASONING,
    WEB_SEARCH_CALL,
    WEB_EXTRACTOR_CALL,
    CODE_INTERPRETER_CALL,
    WEB_SEARCH_IMAGE_CALL,
    IMAGE_SEARCH_CALL,
    MCP_CALL,
    FILE_SEARCH_CALL,
    FUNCTION_CALL,
    MESSAGE,
)


def test_every_reference_item_type_in_one_body() -> None:
    body = dashscope_body(*ALL_ITEMS)
    result = normalize(body)
    assert_row_shapes(result, RESPONSE_ID)
    # every table the body feeds gets rows, so every row literal's keys were checked above
    # (input_items come from their own endpoint: see test_input_items_rows)
    assert all(result.children[t.name] for t in CHILD_TABLES), [
        t.name for t in CHILD_TABLES if not result.children[t.name]
    ]
    items = rows(result, "output_items")
    assert [r["type"] for r in items] == [i["type"] for i in ALL_ITEMS]
    assert_projection(body, projected(result))
    for table, count in expected_counts(body).items():
        assert len(rows(result, table)) == count, table


def test_message() -> None:
    result = normalize(dashscope_body(MESSAGE))
    item = only(result, "output_items")
    assert (item["id"], item["type"], item["role"], item["status"]) == (
        MESSAGE["id"],
        "message",
        "assistant",
        "completed",
    )
    parts = rows(result, "content_parts")
    assert [(p["item_position"], p["position"], p["item_type"], p["type"]) for p in parts] == [
        (0, 0, "message", "output_text"),
        (0, 1, "message", "output_text"),
    ]
    assert parts[0]["text"] == "The code interpreter runs Python in a sandbox."
    assert parts[0]["extra"] is None and parts[1]["extra"] is None  # annotations: their own rows
    annotation = only(result, "annotations")
    assert annotation == {
        "response_id": RESPONSE_ID,
        "item_position": 0,
        "part_position": 0,
        "position": 0,
        "type": "url_citation",
        "url": "https://www.alibabacloud.com/help/en/model-studio/code-interpreter",
        "title": "Code interpreter - Alibaba Cloud Model Studio",
        "start_index": 4,
        "end_index": 20,
        "file_id": None,
        "filename": None,
        "container_id": None,
        "file_index": None,
        "extra": None,
    }
    assert output_text(result.children) == (
        "The code interpreter runs Python in a sandbox. It keeps state per container."
    )


def test_openai_annotation_kinds_and_refusal() -> None:
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [
            {
                "type": "output_text",
                "text": "See the file.",
                "logprobs": [{"token": "See", "logprob": -0.01, "bytes": [83, 101, 101], "top_logprobs": []}],
                "annotations": [
                    {"type": "file_citation", "file_id": "file-1", "filename": "a.pdf", "index": 3},
                    {
                        "type": "container_file_citation",
                        "container_id": "cntr_1",
                        "file_id": "cfile_1",
                        "filename": "out.csv",
                        "start_index": 0,
                        "end_index": 12,
                    },
                    {"type": "file_path", "file_id": "file-2", "index": 7},
                ],
            },
            {"type": "refusal", "refusal": "I can't help with that."},
        ],
    }
    result = normalize(dashscope_body(message))
    file_citation, container, file_path = rows(result, "annotations")
    assert (file_citation["file_id"], file_citation["filename"], file_citation["file_index"]) == (
        "file-1",
        "a.pdf",
        3,
    )
    assert (container["container_id"], container["end_index"]) == ("cntr_1", 12)
    assert (file_path["type"], file_path["file_index"]) == ("file_path", 7)
    text, refusal = rows(result, "content_parts")
    assert text["logprobs"] == message["content"][0]["logprobs"]
    assert (refusal["type"], refusal["text"], refusal["refusal"]) == (
        "refusal",
        None,
        "I can't help with that.",
    )
    assert output_text(result.children) == "See the file."


def test_reasoning() -> None:
    result = normalize(dashscope_body(REASONING, MESSAGE))
    reasoning = rows(result, "output_items")[0]
    assert (reasoning["type"], reasoning["status"]) == ("reasoning", None)
    summaries = rows(result, "reasoning_summaries")
    assert [(s["item_position"], s["position"], s["type"], s["text"]) for s in summaries] == [
        (0, 0, "summary_text", "The user wants a summary of a documentation page."),
        (0, 1, "summary_text", "I should search, then extract the page."),
    ]
    assert summaries[1]["extra"] is None
    # reasoning content lands in content_parts, told apart by item_type ...
    reasoning_parts = [p for p in rows(result, "content_parts") if p["item_type"] == "reasoning"]
    assert [(p["type"], p["text"]) for p in reasoning_parts] == [
        ("reasoning_text", "Search first, then read the page.")
    ]
    # ... and never in output_text
    assert "Search first" not in output_text(result.children)


def test_function_call() -> None:
    result = normalize(dashscope_body(FUNCTION_CALL))
    row = only(result, "output_items")
    assert row["name"] == "get_current_weather"
    assert row["call_id"] == "call_9f1c4c1f3c2e4f6a8b0d2e"
    assert row["arguments"] == FUNCTION_CALL["arguments"]  # text exactly as given
    assert row["status"] == "completed"
    assert output_text(result.children) == ""


def test_web_search_call() -> None:
    result = normalize(dashscope_body(WEB_SEARCH_CALL))
    assert only(result, "output_items")["type"] == "web_search_call"
    action = only(result, "web_search_actions")
    assert action == {
        "response_id": RESPONSE_ID,
        "item_position": 0,
        "type": "search",
        "query": "Alibaba Cloud Model Studio code interpreter",
        "queries": None,
        "url": None,
        "pattern": None,
        "extra": None,
    }
    sources = rows(result, "web_search_sources")
    assert [(s["position"], s["type"], s["url"]) for s in sources] == [
        (0, "url", "https://www.alibabacloud.com/help/en/model-studio/code-interpreter"),
        (1, "url", "https://help.aliyun.com/zh/model-studio/code-interpreter"),
    ]


def test_web_search_sources_beside_the_action_and_as_strings() -> None:
    item = {
        "id": "ws_1",
        "type": "web_search_call",
        "status": "completed",
        "action": {"type": "search", "queries": ["a", "b"]},
        "sources": ["https://a.example", {"type": "url", "url": "https://b.example", "title": "B"}],
    }
    result = normalize(dashscope_body(item))
    assert only(result, "web_search_actions")["queries"] == ["a", "b"]
    sources = rows(result, "web_search_sources")
    assert [(s["url"], s["title"]) for s in sources] == [
        ("https://a.example", None),
        ("https://b.example", "B"),
    ]


def test_code_interpreter_call() -> None:
    image = {"type": "image", "url": "https://files.example/plot.png"}
    item = {**CODE_INTERPRETER_CALL, "outputs": [*CODE_INTERPRETER_CALL["outputs"], image]}
    result = normalize(dashscope_body(item))
    row = only(result, "output_items")
    assert row["code"] == "import math\nprint(math.sqrt(2))"
    assert row["container_id"] == "ctr_5b0e4d6c-71a2-4b1f-9e33-8f2d4c6a0b17"
    logs, image = rows(result, "code_interpreter_outputs")
    assert (logs["type"], logs["logs"], logs["url"]) == ("logs", "1.4142135623730951\n", None)
    assert (image["type"], image["logs"], image["url"]) == (
        "image",
        None,
        "https://files.example/plot.png",
    )
    assert image["extra"] is None


def test_web_extractor_call() -> None:
    result = normalize(dashscope_body(WEB_SEARCH_CALL, WEB_EXTRACTOR_CALL))
    row = rows(result, "output_items")[1]
    assert row["goal"] == WEB_EXTRACTOR_CALL["goal"]
    assert row["output"] == WEB_EXTRACTOR_CALL["output"]
    url = only(result, "web_extractor_urls")
    assert (url["item_position"], url["position"], url["url"], url["extra"]) == (
        1,
        0,
        "https://www.alibabacloud.com/help/en/model-studio/code-interpreter",
        None,
    )


def test_web_search_image_call() -> None:
    result = normalize(dashscope_body(WEB_SEARCH_IMAGE_CALL))
    row = only(result, "output_items")
    assert row["name"] == "web_search_image"
    assert json.loads(row["arguments"]) == {"queries": ["West Lake sunset", "西湖 日落"]}
    assert row["output"] is None  # the JSON string's results are rows of their own
    results = rows(result, "image_search_results")
    assert [(r["position"], r["title"], r["url"], r["result_index"]) for r in results] == [
        (0, "West Lake at sunset", "https://img.example.cn/westlake-1.jpg", 1),
        (1, "Leifeng Pagoda, Hangzhou", "https://img.example.cn/leifeng-2.jpg", 2),
    ]
    assert [r["extra"] for r in results] == [None, None]


def test_image_search_call() -> None:
    result = normalize(dashscope_body(IMAGE_SEARCH_CALL))
    row = only(result, "output_items")
    assert row["name"] == "image_search"
    assert json.loads(row["arguments"]) == {"img_idx": 0, "bbox": [0, 0, 1000, 1000]}
    hit = only(result, "image_search_results")
    assert (hit["title"], hit["result_index"]) == ("West Lake at sunset", 1)


@pytest.mark.parametrize("output", ["not json [", "{}", "[1, null]", None])
def test_image_search_output_that_is_not_a_result_list(output: str | None) -> None:
    item = {**IMAGE_SEARCH_CALL, "output": output}
    result = normalize(dashscope_body(item))
    found = rows(result, "image_search_results")
    if output == "[1, null]":  # a list: its elements are the rows, not the text too
        assert only(result, "output_items")["output"] is None
        assert [(r["title"], r["extra"]) for r in found] == [(None, 1), (None, None)]
    else:
        assert only(result, "output_items")["output"] == output
        assert found == []


def test_mcp_call_and_list_tools() -> None:
    failed = {
        **MCP_CALL,
        "id": "mcp_2",
        "status": "failed",
        "output": None,
        "error": {"type": "http_error", "code": 500, "message": "upstream failed"},
        "approval_request_id": "mcpr_1",
    }
    result = normalize(dashscope_body(MCP_LIST_TOOLS, MCP_CALL, failed))
    listing, call, failure = rows(result, "output_items")
    assert (listing["type"], listing["server_label"]) == ("mcp_list_tools", "amap-maps")
    assert (call["name"], call["server_label"], call["arguments"], call["output"]) == (
        "amap-maps-maps_geo",
        "amap-maps",
        MCP_CALL["arguments"],
        MCP_CALL["output"],
    )
    assert call["error"] is None
    assert json.loads(failure["error"]) == failed["error"]
    assert failure["approval_request_id"] == "mcpr_1"
    tool = only(result, "mcp_tools")
    assert (tool["item_position"], tool["server_label"], tool["name"], tool["description"]) == (
        0,
        "amap-maps",
        "maps_geo",
        "Convert an address into coordinates",
    )
    assert set(tool["extra"]) == set(MCP_LIST_TOOLS["tools"][0]) - {"name", "description"}


def test_file_search_call() -> None:
    result = normalize(dashscope_body(FILE_SEARCH_CALL))
    queries = rows(result, "file_search_queries")
    assert [(q["position"], q["query"]) for q in queries] == [
        (0, "annual leave policy"),
        (1, "年假 天数"),
    ]
    first, second = rows(result, "file_search_results")
    assert (first["file_id"], first["filename"], first["score"], first["attributes"]) == (
        "file_a1b2c3d4e5f6",
        "employee-handbook.pdf",
        0.8731,
        None,
    )
    assert first["text"].startswith("Employees with one to ten years")
    assert second["attributes"] == {"department": "HR", "year": 2026}
    assert second["extra"] is None


def test_file_search_call_without_results() -> None:
    result = normalize(dashscope_body({**FILE_SEARCH_CALL, "results": None}))
    assert len(rows(result, "file_search_queries")) == 2
    assert rows(result, "file_search_results") == []


def test_dashscope_usage_x_details_and_x_tools() -> None:
    body = dashscope_body(MESSAGE)
    result = normalize(body)
    row = result.response
    assert (row["input_tokens"], row["cached_tokens"], row["output_tokens"]) == (5120, 1024, 830)
    assert (row["reasoning_tokens"], row["total_tokens"]) == (412, 5950)
    assert row["extra"] is None  # every usage field has a column or rows
    billing = only(result, "billing_details")
    assert (billing["x_billing_type"], billing["input_tokens"], billing["output_tokens"]) == (
        "response_api",
        5120,
        830,
    )
    assert (billing["total_tokens"], billing["cached_tokens"], billing["reasoning_tokens"]) == (
        5950,
        1024,
        None,
    )
    tools = {r["tool"]: r for r in rows(result, "tool_usage")}
    assert {r["source"] for r in tools.values()} == {"usage.x_tools"}
    assert {name: r["count"] for name, r in tools.items()} == {
        "web_search": 2,
        "web_extractor": 1,
        "code_interpreter": 1,
    }
    assert tools["web_search"]["extra"] is None


def test_xai_server_side_tool_usage() -> None:
    usage = {
        "input_tokens": 10,
        "output_tokens": 2,
        "total_tokens": 12,
        "num_server_side_tools_used": 2,
        "server_side_tool_usage_details": {"web_search_calls": 2, "x_search_calls": 0},
    }
    result = normalize(dashscope_body(usage=usage))
    counts = {(r["source"], r["tool"]): r["count"] for r in rows(result, "tool_usage")}
    assert counts == {
        ("usage.server_side_tool_usage_details", "web_search_calls"): 2,
        ("usage.server_side_tool_usage_details", "x_search_calls"): 0,
    }
    assert result.response["cached_tokens"] is None


def test_response_scalars() -> None:
    body = dashscope_body(
        MESSAGE,
        created_at=1764265411.25,
        error={"code": "server_error", "message": "The request timed out."},
        incomplete_details={"reason": "max_output_tokens"},
        instructions=[{"type": "message", "role": "developer", "content": "Be brief."}],
        tool_choice={"type": "function", "name": "get_current_weather"},
        reasoning={"effort": "high", "summary": "auto"},
        conversation={"id": "conv_123"},
        previous_response_id="resp_prev",
        user=None,
        max_output_tokens=2048,
    )
    row = normalize(body).response
    assert row["created_at"] == datetime(2025, 11, 27, 17, 43, 31, 250000, tzinfo=UTC)
    assert row["completed_at"] == datetime.fromtimestamp(1778676420, UTC)
    assert (row["error_code"], row["error_message"]) == ("server_error", "The request timed out.")
    assert row["incomplete_reason"] == "max_output_tokens"
    assert row["instructions"] == body["instructions"]
    assert row["tool_choice"] == body["tool_choice"]
    assert (row["reasoning_effort"], row["reasoning_summary"]) == ("high", "auto")
    assert row["conversation_id"] == "conv_123"
    assert row["previous_response_id"] == "resp_prev"
    assert row["user"] is None
    assert row["max_output_tokens"] == 2048
    assert (row["temperature"], row["top_p"], row["top_logprobs"]) == (1.0, 1.0, 0)
    assert (row["background"], row["store"], row["parallel_tool_calls"]) == (False, True, True)
    assert row["service_tier"] == "default"
    assert row["metadata"] == {}
    assert row["extra"] is None


# --- unknown and odd input --------------------------------------------------------------


def test_unknown_item_type_and_fields_survive() -> None:
    future = {
        "id": "hg_1",
        "type": "hologram_call",
        "status": "completed",
        "call_id": "call_h",
        "beam": {"colour": "blue", "lumens": 900},
    }
    message = {
        **MESSAGE,
        "sentiment": "cheerful",
        "content": [
            {
                **MESSAGE["content"][0],
                "voice": "alto",
                "annotations": [{"type": "hologram_citation", "frame": 3}],
            },
            {"type": "output_hologram", "frames": 24},
        ],
    }
    body = dashscope_body(future, message, x_trace={"region": "cn-beijing"}, safety_score=0.02)
    result = normalize(body)
    assert_row_shapes(result, RESPONSE_ID)
    future_row, message_row = rows(result, "output_items")
    assert (future_row["type"], future_row["call_id"], future_row["extra"]) == (
        "hologram_call",
        "call_h",
        {"beam": {"colour": "blue", "lumens": 900}},
    )
    assert message_row["extra"] == {"sentiment": "cheerful"}
    text, hologram = rows(result, "content_parts")
    assert text["extra"] == {"voice": "alto"}
    assert (hologram["type"], hologram["text"], hologram["extra"]) == (
        "output_hologram",
        None,
        {"frames": 24},
    )
    annotation = only(result, "annotations")
    assert (annotation["type"], annotation["url"], annotation["extra"]) == (
        "hologram_citation",
        None,
        {"frame": 3},
    )
    assert_projection(body, projected(result))
    assert result.response["extra"] == {"x_trace": {"region": "cn-beijing"}, "safety_score": 0.02}


def test_odd_top_level_types_go_to_extra() -> None:
    body = dashscope_body(
        MESSAGE,
        created_at="2026-05-13T10:00:00Z",
        completed_at=True,
        temperature="warm",
        top_logprobs=2**40,
        max_output_tokens=2**70,
        store="yes",
        model=["qwen-plus"],
        status=None,
        usage={
            "input_tokens": "45",
            "output_tokens": 2**64,
            "total_tokens": 12.0,
            "input_tokens_details": [],
            "output_tokens_details": {"reasoning_tokens": None},
        },
        output_text="not computed here",
    )
    row = normalize(body).response
    odd_keys = ("created_at", "completed_at", "temperature", "top_logprobs", "max_output_tokens")
    for key in (*odd_keys, "store", "model"):
        assert row[key] is None, key
        assert row["extra"][key] == body[key], key
    assert row["status"] is None
    assert "status" not in row["extra"]  # null is not odd: nothing to keep
    assert row["extra"]["output_text"] == "not computed here"
    assert (row["input_tokens"], row["output_tokens"], row["total_tokens"]) == (None, None, 12)
    assert row["cached_tokens"] is None and row["reasoning_tokens"] is None
    # what no column took, and nothing else: the odd values and the details list
    assert row["extra"]["usage"] == {
        "input_tokens": "45",
        "output_tokens": 2**64,
        "input_tokens_details": [],
    }


def test_odd_output_elements() -> None:
    body = dashscope_body(
        42,
        None,
        "loose text",
        {
            "type": "message",
            "role": "assistant",
            "content": ["plain", None, {"type": "output_text", "text": 7}],
        },
        {"type": "function_call", "name": 5, "arguments": {"city": "Hangzhou"}, "call_id": None},
        {"type": "code_interpreter_call", "outputs": {"type": "logs"}, "output": ["a", 1]},
        {"type": "reasoning", "summary": ["just a string", {"text": None}]},
        {"type": "web_search_call", "action": "search"},
        {"type": "mcp_list_tools", "tools": [None]},
        {"type": "file_search_call", "queries": [1, "q"], "results": [None, {"score": "high"}]},
        {"type": 17, "summary": [{"text": "not a reasoning item"}]},
    )
    result = normalize(body)
    assert_row_shapes(result, RESPONSE_ID)
    items = rows(result, "output_items")
    assert [r["extra"] for r in items[:3]] == [42, None, "loose text"]
    assert all(r["type"] is None for r in items[:3])
    assert [(p["type"], p["text"], p["extra"]) for p in rows(result, "content_parts")] == [
        (None, None, "plain"),
        (None, None, None),
        ("output_text", None, {"text": 7}),
    ]
    assert items[5]["extra"] == {"outputs": {"type": "logs"}}  # not a list: not spread
    assert items[10]["extra"] == {"type": 17, "summary": [{"text": "not a reasoning item"}]}
    call = items[4]
    assert call["name"] is None
    assert json.loads(call["arguments"]) == {"city": "Hangzhou"}
    assert json.loads(items[5]["output"]) == ["a", 1]
    assert rows(result, "code_interpreter_outputs") == []
    assert [(s["type"], s["extra"]) for s in rows(result, "reasoning_summaries")] == [
        (None, "just a string"),
        (None, None),
    ]
    assert rows(result, "web_search_actions") == []
    assert items[7]["extra"] == {"action": "search"}
    assert only(result, "mcp_tools")["extra"] is None
    assert [(q["query"], q["extra"]) for q in rows(result, "file_search_queries")] == [(None, 1), ("q", None)]
    assert [(r["score"], r["extra"]) for r in rows(result, "file_search_results")] == [
        (None, None),
        (None, {"score": "high"}),
    ]
    assert output_text(result.children) == ""


def test_output_that_is_not_a_list_is_kept_in_extra() -> None:
    body = dashscope_body()
    body["output"] = {"type": "message"}
    result = normalize(body)
    assert rows(result, "output_items") == []
    assert result.response["extra"] == {"output": {"type": "message"}}


def test_missing_everything_but_the_id() -> None:
    result = normalize({"id": "gen-1784286312-3R0SU4Mb8ucOpEJ79d2o"})
    assert_row_shapes(result, "gen-1784286312-3R0SU4Mb8ucOpEJ79d2o")
    assert all(v is None for k, v in result.response.items() if k != "id")
    assert all(rows == [] for rows in result.children.values())


ODD_VALUES: list[Any] = [None, True, -1, 2**80, 3.5, "x", [], [None, "x", 1], {}, {"k": [1]}]


def test_never_raises_on_odd_types_near_the_top(corpus_sample: list[dict[str, Any]]) -> None:
    """Replace every value at depth 1, 2 and 3 with odd JSON values, one at a time."""
    calls = 0
    for body in corpus_sample:
        for path in _paths(body, depth=3):
            for odd in ODD_VALUES:
                mutated = _replaced(body, path, odd)
                result = normalize(mutated)
                assert_row_shapes(result, body["id"] if path != ("id",) else result.response["id"])
                calls += 1
    assert calls > 1000


@pytest.fixture
def corpus_sample() -> list[dict[str, Any]]:
    """A body per distinct set of output item types, plus the DashScope-shaped one."""
    seen: set[tuple[str, ...]] = set()
    sample = [dashscope_body(*ALL_ITEMS)]
    for path in CORPUS_FILES:
        body = load(path)
        kinds = tuple(sorted({i.get("type", "") for i in body["output"]}))
        if kinds not in seen:
            seen.add(kinds)
            sample.append(_shortened(body))
    return sample


def _shortened(value: Any) -> Any:
    """``value`` with strings cut to 4 KiB: still opaque payloads when they were (1 KiB is
    enough), without hashing a 3 MB image 10,000 times (9 of the test's 10 s)."""
    if isinstance(value, str):
        return value[:4096]
    if isinstance(value, dict):
        return {key: _shortened(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shortened(item) for item in value]
    return value


def _paths(value: Any, depth: int, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if depth == 0:
        return []
    children: list[tuple[Any, Any]] = []
    if isinstance(value, dict):
        children = [(k, v) for k, v in value.items() if not (prefix == () and k == "id")]
    elif isinstance(value, list):
        children = list(enumerate(value[:3]))
    found = []
    for key, child in children:
        found.append((*prefix, key))
        found.extend(_paths(child, depth - 1, (*prefix, key)))
    return found


def _replaced(body: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    """A copy of body with the value at path replaced (copies only along the path)."""

    def replace(node: Any, rest: tuple[Any, ...]) -> Any:
        head, tail = rest[0], rest[1:]
        copied = dict(node) if isinstance(node, dict) else list(node)
        copied[head] = value if not tail else replace(node[head], tail)
        return copied

    result: dict[str, Any] = replace(body, path)
    return result


@pytest.mark.parametrize(
    "body",
    [[], "resp_1", 42, None, {}, {"id": None}, {"id": 7}, {"id": ["r"]}, {"response": {"id": "r"}}],
    ids=repr,
)
def test_not_a_response_body(body: Any) -> None:
    with pytest.raises(NormalizationError):
        normalize(body)


def test_normalized_response_is_frozen() -> None:
    result = normalize(dashscope_body(MESSAGE))
    with pytest.raises(AttributeError):
        result.response = {}  # type: ignore[misc]


def test_input_items_rows() -> None:
    from archiver.normalize import item_digest, normalize_input_items

    items = [
        {"id": "msg_1", "type": "message", "role": "system", "content": "Be brief."},
        {"id": "fc_3", "type": "function_call_output", "call_id": "call_9", "output": "{}"},
        "not an object",
        {"role": "system", "type": "message", "content": "Be brief.", "id": "msg_1"},  # same, reordered
    ]
    rows_ = normalize_input_items("resp_x", items)
    assert all(set(r) == {"response_id", "position", "item_sha256", "item"} for r in rows_)
    assert [r["position"] for r in rows_] == [0, 1, 2, 3]
    assert [r["item"] for r in rows_] == items  # nothing dropped
    # content-addressed: the canonical JSON (keys sorted) decides, not the key order
    assert rows_[0]["item_sha256"] == rows_[3]["item_sha256"] == item_digest(items[0])
    assert len({r["item_sha256"] for r in rows_}) == 3
    assert item_digest({"n": 2**70}) != item_digest({"n": 2**70 + 1})  # beyond orjson's integers


def test_opaque_payloads() -> None:
    png = "iVBORw0KGgo" + "A" * 2000
    assert is_opaque(png) and is_opaque("data:image/png;base64," + "x" * 2000)
    assert not is_opaque("A" * 1000)  # short: kept where it is
    assert not is_opaque("word " * 400)  # text is never opaque, however long
    item = {"id": "ig_1", "type": "image_generation_call", "status": "completed", "result": png}
    code = {
        "type": "code_interpreter_call",
        "id": "ci_1",
        "outputs": [{"type": "image", "url": "data:image/png;base64," + png}],
    }
    body = dashscope_body(item, code, instructions=[{"type": "input_image", "image_url": png}])
    result = normalize(body)
    stub = {OPAQUE_KEY: {"length": len(png), "sha256": hashlib.sha256(png.encode()).hexdigest()}}
    assert rows(result, "output_items")[0]["extra"] == {"result": stub}
    (image,) = rows(result, "code_interpreter_outputs")
    assert image["url"] is None and image["extra"]["url"][OPAQUE_KEY]["length"] == len(png) + 22
    assert result.response["instructions"] == [{"type": "input_image", "image_url": stub}]
    assert_projection(body, projected(result))


def test_the_projection_check_can_fail() -> None:
    """tests/projection.py finds a dropped field, a whole element, an opaque payload."""
    from tests.projection import copies_of_elements, missing_fields, opaque_outside_raw

    body = dashscope_body(MESSAGE, WEB_SEARCH_CALL)
    result = normalize(body)
    tables = projected(result)
    assert not missing_fields(body, tables)
    dropped = copy.deepcopy(tables)
    dropped["annotations"][0]["title"] = None
    assert missing_fields(body, dropped) == [f"title={MESSAGE['content'][0]['annotations'][0]['title']!r}"]
    whole = copy.deepcopy(tables)
    whole["output_items"][0]["extra"] = {"copy": MESSAGE}
    assert copies_of_elements(body, whole)
    opaque = copy.deepcopy(tables)
    opaque["content_parts"][0]["text"] = "data:image/png;base64," + "A" * 2000
    assert opaque_outside_raw(opaque)


# --- input-item lists (DashScope's list fields) ----------------------------------------


def test_epoch_any_unit_tells_milliseconds_from_seconds() -> None:
    from datetime import UTC, datetime

    from archiver.normalize import epoch_any_unit

    seconds = datetime(2026, 5, 13, 12, 34, 26, tzinfo=UTC)
    assert epoch_any_unit(1778675666) == seconds
    assert epoch_any_unit(1778675666000) == seconds
    assert epoch_any_unit(1778675666123) == seconds.replace(microsecond=123000)
    assert epoch_any_unit(1778675666.5) == seconds.replace(microsecond=500000)
    assert (
        epoch_any_unit("1778675666") is None and epoch_any_unit(None) is None and epoch_any_unit(True) is None
    )
    assert epoch_any_unit(10**30) is None  # out of range: no time, no crash


def test_normalize_input_list_keeps_every_field() -> None:
    from datetime import UTC, datetime

    from archiver.normalize import normalize_input_list

    assert normalize_input_list("resp_a", {}) is None
    row = normalize_input_list(
        "resp_a",
        {"id": "resp_a", "created_at": 1778674066000, "model": "qwen-plus", "previous_response_id": "resp_0"},
    )
    assert row == {
        "response_id": "resp_a",
        "created_at": datetime(2026, 5, 13, 12, 7, 46, tzinfo=UTC),
        "model": "qwen-plus",
        "previous_response_id": "resp_0",
        "extra": None,
    }
    odd = normalize_input_list("resp_a", {"id": "resp_b", "created_at": "soon", "model": 7, "x_new": [1]})
    assert odd is not None and odd["created_at"] is None and odd["model"] is None
    assert odd["extra"] == {"id": "resp_b", "created_at": "soon", "model": 7, "x_new": [1]}
