"""Which behaviour of the mock Responses API an ID selects, and the fault answers.

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
  (see :data:`archiver.mockbodies.GATED_INCLUDE`): a reasoning item's ``encrypted_content``, a
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

Normal IDs also take the faults of ``MockConfig.fail_rate``: see :func:`injected_fault`.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Final

import orjson
from aiohttp import web

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


def scenario_of(response_id: str) -> tuple[str | None, int | None]:
    """The scenario name and N chosen by an ID, or ``(None, None)`` for a normal ID."""
    match = SCENARIO_RE.match(response_id)
    if match is None or match.group(1) not in SCENARIOS:
        return None, None
    count = match.group(2)
    return match.group(1), int(count) if count else None


def within(count: int | None, fetch_number: int) -> bool:
    """Whether a fault for the "first N fetches" (forever without N) applies."""
    return count is None or fetch_number <= count


def lifecycle_phase(response_id: str, fetch_number: int) -> str:
    """The lifecycle phase of a body: ``queued``, ``in_progress`` or ``completed``."""
    name, count = scenario_of(response_id)
    if name != "pending" or not within(count, fetch_number):
        return "completed"
    return "queued" if fetch_number <= 1 else "in_progress"


def error_body(message: str, type_: str, code: str | None = None) -> bytes:
    """An error body in the providers' shape: ``{"error": {"code", "message", "type"}}``."""
    error: dict[str, Any] = {"code": code} if code is not None else {}
    error.update(message=message, type=type_)
    return orjson.dumps({"error": error})


def not_found_body(response_id: str) -> bytes:
    """The 404 body naming the ID."""
    return error_body(f"Response with id '{response_id}' not found.", "InvalidParameter")


INVALID_KEY_BODY: Final = orjson.dumps(
    {"error": {"message": "Incorrect API key provided.", "type": "invalid_request_error",
               "code": "invalid_api_key"}}
)  # fmt: skip
THROTTLED_BODY: Final = error_body(
    "Requests rate limit exceeded, please try again later.",
    "Throttling.RateQuota",
    "Throttling.RateQuota",
)
QUOTA_BODY: Final = orjson.dumps(
    {"error": {"message": "You exceeded your current quota, please check your plan and "
               "billing details.", "type": "insufficient_quota", "code": "insufficient_quota"}}
)  # fmt: skip
SERVER_ERROR_BODY: Final = error_body(
    "An internal error has occured, please try again later or contact service support.",
    "InternalError",
    "InternalError",
)
UNAVAILABLE_BODY: Final = error_body(
    "The service is temporarily unavailable, please try again later.",
    "ServiceUnavailable",
    "ServiceUnavailable",
)
BAD_REQUEST_BODY: Final = error_body(
    "The request is malformed: parameter 'response_id' is invalid.",
    "InvalidParameter",
    "InvalidParameter",
)
FORBIDDEN_BODY: Final = error_body(
    "Access to model denied. Please make sure you are eligible for using the model.",
    "AccessDenied.Unpurchased",
    "AccessDenied.Unpurchased",
)
ARREARAGE_BODY: Final = error_body(
    "Access denied, please make sure your account is in good standing.",
    "Arrearage",
    "Arrearage",
)


def retry_after_headers(retry_after_s: float) -> dict[str, str]:
    """``retry-after`` (seconds, may be fractional) and ``retry-after-ms`` of a 429."""
    seconds = f"{retry_after_s:.3f}".rstrip("0").rstrip(".") or "0"
    return {"retry-after": seconds, "retry-after-ms": str(round(retry_after_s * 1000))}


def json_response(status: int, body: bytes, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON answer with these exact body bytes."""
    return web.Response(status=status, body=body, content_type=JSON_CONTENT_TYPE, headers=headers)


def scenario_answer(
    request: web.Request, name: str, response_id: str, retry_headers: dict[str, str]
) -> web.Response | None:
    """The non-200 answer of a scenario while its fault applies (None: a 200)."""
    match name:
        case "notfound":
            return json_response(404, not_found_body(response_id))
        case "flaky":
            return json_response(503, UNAVAILABLE_BODY)
        case "ratelimit":
            return json_response(429, THROTTLED_BODY, retry_headers)
        case "quota":
            return json_response(429, QUOTA_BODY)
        case "servererror":
            return json_response(500, SERVER_ERROR_BODY)
        case "badrequest":
            return json_response(400, BAD_REQUEST_BODY)
        case "unauthorized":
            return json_response(401, INVALID_KEY_BODY)
        case "forbidden":
            return json_response(403, FORBIDDEN_BODY)
        case "arrearage":
            return json_response(400, ARREARAGE_BODY)
        case "reset":
            drop_connection(request)
            return None
    return None


def injected_fault(
    response_id: str, fetch_number: int, *, seed: int, fail_rate: float, retry_headers: dict[str, str]
) -> web.Response | None:
    """A transient fault for ``fail_rate`` of normal fetches, or None."""
    if fail_rate <= 0:
        return None
    digest = hashlib.blake2b(f"{seed}\x00{response_id}\x00{fetch_number}".encode(), digest_size=8).digest()
    draw = int.from_bytes(digest[:7], "big") / (1 << 56)
    if draw >= fail_rate:
        return None
    match digest[7] % 3:
        case 0:
            return json_response(429, THROTTLED_BODY, retry_headers)
        case 1:
            return json_response(500, SERVER_ERROR_BODY)
        case _:
            return json_response(503, UNAVAILABLE_BODY)


def drop_connection(request: web.Request) -> None:
    """Close the connection so the client sees a disconnect, not an HTTP answer."""
    transport = request.transport
    if transport is not None:
        transport.abort()
