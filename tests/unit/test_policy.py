"""The outcome table: what one HTTP exchange means."""

from __future__ import annotations

import asyncio
import email.utils
from collections.abc import Mapping
from typing import Any

import orjson
import pytest

from archiver.outcomes import Archived, Outcome, Permanent, Retry, StopAll
from archiver.policy import (
    ProviderError,
    ProviderProfile,
    RetryPolicy,
    backoff_delay,
    classify_exception,
    classify_response,
    parse_retry_after,
    profile_for_base_url,
    repoll_delay,
)

POLICY = RetryPolicy()
NOW = 1_700_000_000.0
RID = "resp_abc123"
FAKE_KEY = "sk-FAKEKEY0123456789abcdefSECRET"
SECRET_HEADERS = {
    "Authorization": f"Bearer {FAKE_KEY}",
    "X-Api-Key": FAKE_KEY,
    "Set-Cookie": f"session={FAKE_KEY}",
    "X-Echo": FAKE_KEY,
}


def classify(
    status_code: int,
    body: bytes | dict[str, Any] = b"",
    *,
    headers: Mapping[str, str] | None = None,
    attempt: int = 1,
    previous: int | None = None,
    profile: ProviderProfile = "openai",
    policy: RetryPolicy = POLICY,
    rand: float = 0.0,
    requested_id: str = RID,
) -> Outcome:
    raw = orjson.dumps(body) if isinstance(body, dict) else body
    return classify_response(
        status_code=status_code,
        headers=headers or {},
        body=raw,
        requested_id=requested_id,
        attempt=attempt,
        previous_status_code=previous,
        policy=policy,
        profile=profile,
        now=NOW,
        rand=rand,
    )


def openai_error(message: str, type_: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def dashscope_error(code: str, message: str, request_id: str = "d7f1-42") -> dict[str, Any]:
    return {"code": code, "message": message, "request_id": request_id}


# --- profiles ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base_url", "profile"),
    [
        ("https://dashscope.aliyuncs.com/compatible-mode/v1", "dashscope"),
        ("https://dashscope-intl.aliyuncs.com/compatible-mode/v1", "dashscope"),
        ("https://DashScope.AliyunCS.com./api/v1", "dashscope"),
        ("https://my-workspace.cn-beijing.aliyuncs.com/v1", "dashscope"),
        ("dashscope-intl.aliyuncs.com/compatible-mode/v1", "dashscope"),
        # workspace domains: {WorkspaceId}.{region}.maas.aliyuncs.com
        ("https://llm-8f3kx2.cn-beijing.maas.aliyuncs.com/compatible-mode/v1", "dashscope"),
        ("https://ws-1a2b3c.ap-southeast-1.maas.aliyuncs.com/compatible-mode/v1", "dashscope"),
        # the older application path, on DashScope and behind a proxy
        ("https://dashscope.aliyuncs.com/api/v2/apps/protocols/compatible-mode/v1", "dashscope"),
        ("https://llm-proxy.corp.example/api/v2/apps/protocols/compatible-mode/v1", "dashscope"),
        ("https://llm-proxy.corp.example/compatible-mode", "dashscope"),
        ("https://llm-proxy.corp.example/not-compatible-mode-at-all/v1", "generic"),
        ("https://api.openai.com/v1", "openai"),
        ("https://eu.api.openai.com/v1", "openai"),
        ("https://myres.openai.azure.com/openai/v1", "openai"),
        ("https://api.deepseek.com/v1", "generic"),
        ("https://openrouter.ai/api/v1", "generic"),
        ("http://127.0.0.1:8080/v1", "generic"),
        ("https://aliyuncs.com.evil.example/v1", "generic"),
        ("https://api.openai.com.evil.example/v1", "generic"),
        ("", "generic"),
    ],
)
def test_profile_for_base_url(base_url: str, profile: str) -> None:
    assert profile_for_base_url(base_url) == profile


# --- backoff ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "full"),
    [(1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0), (9, 256.0), (10, 300.0), (100, 300.0)],
)
def test_backoff_bounds_and_jitter(attempt: int, full: float) -> None:
    assert backoff_delay(attempt, POLICY, 0.0) == pytest.approx(full)
    assert backoff_delay(attempt, POLICY, 0.5) == pytest.approx(full * 0.875)
    for rand in (0.0, 0.1, 0.5, 0.999999):
        delay = backoff_delay(attempt, POLICY, rand)
        assert full * 0.75 < delay <= full


def test_backoff_handles_odd_inputs() -> None:
    assert backoff_delay(0, POLICY, 0.0) == 1.0
    assert backoff_delay(-5, POLICY, 0.0) == 1.0
    assert backoff_delay(10**9, POLICY, 0.0) == 300.0
    assert backoff_delay(1, POLICY, 7.0) == pytest.approx(0.75)  # rand clamped
    custom = RetryPolicy(backoff_base_s=0.5, backoff_cap_s=3.0)
    assert [backoff_delay(n, custom, 0.0) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_repoll_delay_grows_and_caps() -> None:
    assert [repoll_delay(n, POLICY, 0.0) for n in (1, 2, 3, 4)] == [5.0, 10.0, 20.0, 40.0]
    assert repoll_delay(50, POLICY, 0.0) == POLICY.backoff_cap_s
    assert 3.75 < repoll_delay(1, POLICY, 0.99) <= 5.0


# --- Retry-After ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"Retry-After-Ms": "250.5"}, 0.2505),
        ({"retry-after": "7"}, 7.0),
        ({"Retry-After": "2.5"}, 2.5),
        ({"RETRY-AFTER": " 3 "}, 3.0),
        ({"retry-after-ms": "2000", "retry-after": "9"}, 2.0),  # ms wins
        ({"retry-after-ms": "soon", "retry-after": "9"}, 9.0),  # garbage ms falls through
        ({"retry-after": "-4"}, 0.0),
        ({"retry-after-ms": "-100"}, 0.0),
        ({"retry-after": "soon"}, None),
        ({"retry-after": ""}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "inf"}, None),
        ({"retry-after": "1e3"}, None),
        ({"retry-after": "0x10"}, None),
        ({"retry-after": "Mon, 99 Foo 2024 25:61:00 GMT"}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    result = parse_retry_after(headers, NOW)
    if expected is None:
        assert result is None
    else:
        assert result == pytest.approx(expected)


def test_parse_retry_after_http_date() -> None:
    future = email.utils.formatdate(NOW + 120, usegmt=True)
    past = email.utils.formatdate(NOW - 120, usegmt=True)
    assert parse_retry_after({"Retry-After": future}, NOW) == pytest.approx(120.0)
    assert parse_retry_after({"retry-after": past}, NOW) == 0.0
    # "-0000" parses to a naive datetime: read it as UTC.
    unknown_zone = email.utils.formatdate(NOW + 60)
    assert unknown_zone.endswith("-0000")
    assert parse_retry_after({"retry-after": unknown_zone}, NOW) == pytest.approx(60.0)


def test_parse_retry_after_case_insensitive_mapping() -> None:
    multidict = pytest.importorskip("multidict")
    headers = multidict.CIMultiDictProxy(multidict.CIMultiDict({"Retry-After": "4"}))
    assert parse_retry_after(headers, NOW) == 4.0


# --- 200 --------------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["completed", "failed", "cancelled", "incomplete"])
def test_terminal_body_is_archived(status: str) -> None:
    raw = orjson.dumps({"id": RID, "object": "response", "status": status})
    assert classify(200, raw) == Archived(raw=raw, status_code=200, terminal=True, response_status=status)


@pytest.mark.parametrize("status", ["queued", "in_progress"])
def test_running_body_is_archived_as_snapshot(status: str) -> None:
    raw = orjson.dumps({"id": RID, "status": status})
    assert classify(200, raw) == Archived(raw=raw, status_code=200, terminal=False, response_status=status)


@pytest.mark.parametrize(
    ("body", "response_status"),
    [
        ({"id": RID}, None),
        ({"id": RID, "status": "requires_action"}, "requires_action"),
        ({"id": RID, "status": 3}, None),
    ],
)
def test_missing_or_unknown_status_counts_as_terminal(
    body: dict[str, Any], response_status: str | None
) -> None:
    outcome = classify(200, body)
    assert isinstance(outcome, Archived)
    assert outcome.terminal is True
    assert outcome.response_status == response_status


def test_archived_body_is_kept_byte_for_byte() -> None:
    raw = b'{ "id" : "resp_abc123",\n "status":"completed", "text": "nul \\u0000 here",  "n": 1.50 }'
    outcome = classify(200, raw)
    assert isinstance(outcome, Archived)
    assert outcome.raw is raw


def test_body_with_lone_surrogate_escape_is_still_json() -> None:
    # orjson refuses lone surrogates; real model output has them. The body is valid JSON.
    raw = b'{"id": "resp_abc123", "status": "completed", "text": "half an emoji \\ud83d"}'
    outcome = classify(200, raw)
    assert isinstance(outcome, Archived)
    assert outcome.raw == raw


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "body is empty"),
        (b"   \n", "body is empty"),
        (b"<html>oops</html>", "body is not valid JSON: "),
        (b'{"id": "resp_abc123", "status": "compl', "body is not valid JSON: "),
        (b'{"id": "resp_abc123"} trailing', "body is not valid JSON: "),
        (b'{"id": NaN}', "body is not valid JSON: "),
        (b"\xff\xfe{}", "body is not valid JSON: "),
        (b'["resp_abc123"]', "body is a JSON array, not an object"),
        (b'"resp_abc123"', "body is a JSON string, not an object"),
        (b"null", "body is a JSON null, not an object"),
        (b'{"object": "response"}', "body has no 'id' field"),
        (b'{"id": 5}', "body 'id' is a number, not a string"),
        (b'{"id": "resp_other"}', "body id 'resp_other' differs from requested 'resp_abc123'"),
        (b'{"id": "RESP_ABC123"}', "body id 'RESP_ABC123' differs from requested"),
    ],
)
def test_bad_200_body_is_retried_with_the_bytes(raw: bytes, reason: str) -> None:
    outcome = classify(200, raw, attempt=2, rand=0.0)
    assert isinstance(outcome, Retry)
    assert outcome.reason.startswith(reason)
    assert outcome.body == raw
    assert outcome.status_code == 200
    assert outcome.delay_s == backoff_delay(2, POLICY, 0.0)
    assert outcome.throttled is False


def test_bad_200_body_fails_at_max_attempts_with_the_bytes() -> None:
    raw = b'{"id": "resp_other", "status": "completed"}'
    outcome = classify(200, raw, attempt=POLICY.max_attempts)
    assert outcome == Permanent(
        "failed",
        "gave up after 8 attempts: body id 'resp_other' differs from requested 'resp_abc123'",
        200,
        raw,
    )


def test_mismatch_reason_shortens_huge_ids() -> None:
    outcome = classify(200, {"id": "z" * 10_000})
    assert isinstance(outcome, Retry)
    assert len(outcome.reason) <= 300


# --- 404 --------------------------------------------------------------------------------

NOT_FOUND = openai_error("Response with id 'resp_abc123' not found.", "invalid_request_error")


def test_first_404_is_rechecked_once() -> None:
    outcome = classify(404, NOT_FOUND, previous=None)
    assert outcome == Retry(POLICY.not_found_recheck_s, "not found; re-checking once", 404)
    assert classify(404, NOT_FOUND, previous=503, attempt=3) == outcome


def test_second_404_is_not_found_with_provider_message() -> None:
    outcome = classify(404, NOT_FOUND, previous=404, attempt=2)
    assert isinstance(outcome, Permanent)
    assert outcome.state == "not_found"
    assert outcome.status_code == 404
    assert "Response with id 'resp_abc123' not found." in outcome.reason


def test_404_at_max_attempts_is_not_found_without_recheck() -> None:
    outcome = classify(404, NOT_FOUND, previous=None, attempt=POLICY.max_attempts)
    assert isinstance(outcome, Permanent)
    assert outcome.state == "not_found"


def test_404_request_id_in_reason() -> None:
    outcome = classify(
        404,
        dashscope_error("NotFound", "Response not found", "req-9f3a"),
        previous=404,
        profile="dashscope",
    )
    assert isinstance(outcome, Permanent)
    assert outcome.reason == "404 NotFound: Response not found (request id req-9f3a)"


def test_404_with_non_json_body_is_an_endpoint_symptom_not_not_found() -> None:
    # A plain 404 of an unknown route (a base URL without /v1) says nothing about the ID.
    outcome = classify(404, b"<html>\n<h1>404   Not Found</h1></html>", previous=404)
    assert isinstance(outcome, Retry)
    assert outcome.symptom == "plain_404"
    assert "plain 404" in outcome.reason
    final = classify(404, b"404: Not Found", previous=404, attempt=8)
    assert isinstance(final, Permanent)
    assert final.state == "failed"
    assert final.symptom == "plain_404"


@pytest.mark.parametrize(
    "body",
    [b'{"detail": "Not Found"}', b"[]", b'{"message": "no route"}', b""],
)
def test_404_json_without_an_error_envelope_is_plain(body: bytes) -> None:
    outcome = classify(404, body)
    assert isinstance(outcome, Retry)
    assert outcome.symptom == "plain_404"


def test_404_dashscope_native_envelope_is_not_found() -> None:
    body = b'{"code": "NotFound", "message": "Response not found", "request_id": "r-1"}'
    outcome = classify(404, body, previous=404)
    assert isinstance(outcome, Permanent)
    assert outcome.state == "not_found"
    assert outcome.symptom is None


# --- 400 / 422 / other 4xx / 3xx -----------------------------------------------------------


@pytest.mark.parametrize("status", [400, 422])
def test_bad_request_is_failed_without_retry(status: int) -> None:
    outcome = classify(
        status,
        openai_error("Invalid 'response_id': 'x'.", "invalid_request_error", "invalid_value"),
        headers={"x-request-id": "req_123"},
    )
    assert outcome == Permanent(
        "failed",
        f"{status} invalid_value: Invalid 'response_id': 'x'. (request id req_123)",
        status,
    )


def test_dashscope_native_400_is_failed() -> None:
    outcome = classify(400, dashscope_error("InvalidParameter", "bad id", "r-1"), profile="dashscope")
    assert outcome == Permanent("failed", "400 InvalidParameter: bad id (request id r-1)", 400)


@pytest.mark.parametrize("status", [301, 302, 304, 405, 410, 413, 418, 451, 204, 299])
def test_other_statuses_are_failed(status: int) -> None:
    outcome = classify(status, b"")
    if 300 <= status <= 399:
        # Redirects are never followed; they are an endpoint symptom (see test_redirect_*).
        assert isinstance(outcome, Retry)
        assert outcome.symptom == "redirect"
        return
    assert isinstance(outcome, Permanent)
    assert outcome.state == "failed"
    assert outcome.status_code == status
    assert outcome.reason.startswith(str(status))


def test_redirect_names_its_target_and_gives_up_after_max_attempts() -> None:
    outcome = classify(301, b"", headers={"Location": "https://example.invalid/v1/responses/x"})
    assert isinstance(outcome, Retry)
    assert outcome.reason.startswith("301 redirect to https://example.invalid/v1/responses/x")
    final = classify(302, b"", attempt=8)
    assert isinstance(final, Permanent)
    assert final.symptom == "redirect"


def test_5xx_is_marked_as_a_symptom_and_4xx_is_not() -> None:
    five = classify(502, b"")
    assert isinstance(five, Retry)
    assert five.symptom == "5xx"
    four = classify(409, b"")
    assert isinstance(four, Retry)
    assert four.symptom is None


# --- stop the run -----------------------------------------------------------------------


@pytest.mark.parametrize("profile", ["dashscope", "openai", "generic"])
def test_401_stops_everything(profile: ProviderProfile) -> None:
    outcome = classify(
        401,
        openai_error(
            f"Incorrect API key provided: {FAKE_KEY[:8]}****{FAKE_KEY[-4:]}.",
            "invalid_request_error",
            "invalid_api_key",
        ),
        profile=profile,
    )
    assert isinstance(outcome, StopAll)
    assert outcome.status_code == 401
    assert outcome.reason.startswith("the provider rejected the API key (401 invalid_api_key)")
    assert "ARCHIVER_API_KEY" in outcome.reason
    assert FAKE_KEY[:8] not in outcome.reason


def test_dashscope_invalid_api_key() -> None:
    outcome = classify(
        401, dashscope_error("InvalidApiKey", "Invalid API-key provided."), profile="dashscope"
    )
    assert isinstance(outcome, StopAll)
    assert "(401 InvalidApiKey): Invalid API-key provided.; request id d7f1-42" in outcome.reason


def test_401_without_body() -> None:
    outcome = classify(401, b"")
    assert isinstance(outcome, StopAll)
    assert outcome.reason.startswith("the provider rejected the API key (401): check")


@pytest.mark.parametrize(
    "body",
    [
        dashscope_error("AccessDenied", "Access denied."),
        dashscope_error("AccessDenied.Unpurchased", "Not purchased."),
        openai_error("Project does not have access", "invalid_request_error"),
        b"forbidden",
    ],
)
def test_403_stops_everything(body: bytes | dict[str, Any]) -> None:
    outcome = classify(403, body, profile="dashscope")
    assert isinstance(outcome, StopAll)
    assert outcome.status_code == 403
    assert outcome.reason.startswith("the provider denied access (403")


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, "Arrearage"),
        (400, "PrepaidBillOverdue"),
        (400, "PostpaidBillOverdue"),
        (400, "CommodityNotPurchased"),
        (403, "Arrearage"),
        (429, "Arrearage"),
    ],
)
@pytest.mark.parametrize("profile", ["dashscope", "openai", "generic"])
def test_billing_codes_stop_on_every_profile(status: int, code: str, profile: ProviderProfile) -> None:
    outcome = classify(
        status,
        dashscope_error(code, "Access denied, please make sure your account is in good standing."),
        profile=profile,
    )
    assert isinstance(outcome, StopAll)
    assert outcome.reason.startswith(f"the provider account has a billing problem ({status} {code})")
    assert "request id d7f1-42" in outcome.reason


def test_billing_code_in_compatible_mode_error_object() -> None:
    outcome = classify(
        400,
        openai_error("Access denied, account in arrears.", "Arrearage", "Arrearage"),
        profile="dashscope",
    )
    assert isinstance(outcome, StopAll)


def test_access_denied_code_with_400_stops() -> None:
    outcome = classify(400, dashscope_error("AccessDenied.Unpurchased", "x"), profile="dashscope")
    assert isinstance(outcome, StopAll)
    assert "denied access" in outcome.reason


def test_openai_insufficient_quota_is_billing() -> None:
    body = openai_error(
        "You exceeded your current quota, please check your plan and billing details.",
        "insufficient_quota",
        "insufficient_quota",
    )
    profiles: list[ProviderProfile] = ["openai", "generic"]
    for profile in profiles:
        outcome = classify(429, body, profile=profile, headers={"retry-after": "1"})
        assert isinstance(outcome, StopAll)
        assert outcome.reason.startswith(
            "the provider account has a billing problem (429 insufficient_quota)"
        )


def test_dashscope_insufficient_quota_is_a_throttle() -> None:
    body = openai_error("You exceeded your current quota.", "insufficient_quota", "insufficient_quota")
    outcome = classify(429, body, profile="dashscope", headers={"Retry-After": "12"})
    assert isinstance(outcome, Retry)
    assert outcome.throttled is True
    assert outcome.delay_s == 12.0


def test_402_is_billing() -> None:
    outcome = classify(402, openai_error("Insufficient credits", None), profile="generic")
    assert isinstance(outcome, StopAll)
    assert "billing problem" in outcome.reason


def test_stop_ignores_x_should_retry_and_attempts() -> None:
    outcome = classify(401, b"", headers={"x-should-retry": "true"}, attempt=POLICY.max_attempts)
    assert isinstance(outcome, StopAll)


# --- throttling -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "code",
    ["Throttling", "Throttling.RateQuota", "Throttling.AllocationQuota", "insufficient_quota"],
)
def test_dashscope_throttles(code: str) -> None:
    body = dashscope_error(code, "Requests rate limit exceeded")
    outcome = classify(429, body, profile="dashscope")
    assert isinstance(outcome, Retry)
    assert outcome.throttled is True
    assert outcome.status_code == 429
    assert outcome.delay_s == backoff_delay(1, POLICY, 0.0)
    assert outcome.reason.startswith(f"throttled (429 {code}: Requests rate limit exceeded")


@pytest.mark.parametrize("profile", ["dashscope", "openai", "generic"])
def test_any_other_429_is_a_throttle(profile: ProviderProfile) -> None:
    body = openai_error("Rate limit reached for requests", "requests", "rate_limit_exceeded")
    outcome = classify(429, body, profile=profile, headers={"retry-after-ms": "2500"}, attempt=3)
    assert outcome == Retry(
        2.5,
        "throttled (429 rate_limit_exceeded: Rate limit reached for requests)",
        429,
        throttled=True,
    )


def test_throttle_wait_is_capped() -> None:
    outcome = classify(429, b"", headers={"Retry-After": "86400"})
    assert isinstance(outcome, Retry)
    assert outcome.delay_s == POLICY.max_server_wait_s


@pytest.mark.parametrize("value", ["0", "-3", "Thu, 01 Jan 1970 00:00:00 GMT"])
def test_zero_server_wait_falls_back_to_backoff(value: str) -> None:
    outcome = classify(429, b"", headers={"Retry-After": value}, attempt=2)
    assert isinstance(outcome, Retry)
    assert outcome.delay_s == backoff_delay(2, POLICY, 0.0)


def test_throttle_uses_backoff_when_retry_after_is_garbage() -> None:
    outcome = classify(429, b"", headers={"Retry-After": "later"}, attempt=4, rand=0.5)
    assert isinstance(outcome, Retry)
    assert outcome.delay_s == backoff_delay(4, POLICY, 0.5)


def test_throttle_gives_up_at_max_attempts() -> None:
    outcome = classify(429, b"", attempt=POLICY.max_attempts)
    assert isinstance(outcome, Permanent)
    assert outcome.state == "failed"
    assert outcome.reason.startswith("gave up after 8 attempts: throttled (429")


# --- transient statuses -----------------------------------------------------------------


@pytest.mark.parametrize("status", [408, 409, 425, 500, 502, 503, 504, 520, 599])
def test_transient_statuses_retry_with_backoff(status: int) -> None:
    outcome = classify(status, b"", attempt=3, rand=0.2)
    assert isinstance(outcome, Retry)
    assert outcome.delay_s == backoff_delay(3, POLICY, 0.2)
    assert outcome.status_code == status
    assert outcome.throttled is False
    assert outcome.spend_attempt is True


@pytest.mark.parametrize("status", [408, 503])
def test_transient_statuses_honour_retry_after(status: int) -> None:
    future = email.utils.formatdate(NOW + 42, usegmt=True)
    outcome = classify(status, b"", headers={"Retry-After": future})
    assert isinstance(outcome, Retry)
    assert outcome.delay_s == pytest.approx(42.0)
    capped = classify(status, b"", headers={"retry-after": "5000"})
    assert isinstance(capped, Retry)
    assert capped.delay_s == POLICY.max_server_wait_s


def test_5xx_reason_carries_provider_message() -> None:
    outcome = classify(
        500,
        openai_error("The server had an error processing your request.", "server_error"),
        headers={"x-request-id": "req_42"},
    )
    assert isinstance(outcome, Retry)
    assert outcome.reason == (
        "500 server_error: The server had an error processing your request. (request id req_42)"
    )


@pytest.mark.parametrize("status", [408, 409, 425, 429, 500, 503])
def test_transient_gives_up_at_max_attempts(status: int) -> None:
    policy = RetryPolicy(max_attempts=3)
    assert isinstance(classify(status, b"", attempt=2, policy=policy), Retry)
    outcome = classify(status, b"", attempt=3, policy=policy)
    assert isinstance(outcome, Permanent)
    assert outcome.state == "failed"
    assert outcome.status_code == status
    assert outcome.reason.startswith("gave up after 3 attempts: ")


# --- x-should-retry ---------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 410, 422])
def test_x_should_retry_true_makes_4xx_retryable(status: int) -> None:
    outcome = classify(status, b"", headers={"X-Should-Retry": "true"}, attempt=2)
    assert isinstance(outcome, Retry)
    assert outcome.delay_s == backoff_delay(2, POLICY, 0.0)
    assert outcome.reason.endswith("server asked to retry")
    gave_up = classify(status, b"", headers={"x-should-retry": "true"}, attempt=8)
    assert isinstance(gave_up, Permanent)
    assert gave_up.state == "failed"


def test_x_should_retry_true_does_not_touch_3xx() -> None:
    outcome = classify(302, b"", headers={"x-should-retry": "true"})
    assert isinstance(outcome, Retry)
    assert outcome.symptom == "redirect"
    assert "server asked" not in outcome.reason


@pytest.mark.parametrize("status", [408, 429, 500, 503])
def test_x_should_retry_false_makes_transient_permanent(status: int) -> None:
    outcome = classify(status, b"", headers={"x-should-retry": "FALSE"})
    assert isinstance(outcome, Permanent)
    assert outcome.state == "failed"
    assert outcome.reason.endswith("server said not to retry")


def test_x_should_retry_on_404() -> None:
    assert classify(404, NOT_FOUND, headers={"x-should-retry": "false"}) == Permanent(
        "not_found",
        "404 invalid_request_error: Response with id 'resp_abc123' not found.",
        404,
    )
    again = classify(404, NOT_FOUND, headers={"x-should-retry": "true"}, previous=404, attempt=2)
    assert isinstance(again, Retry)
    final = classify(404, NOT_FOUND, headers={"x-should-retry": "true"}, previous=404, attempt=8)
    assert isinstance(final, Permanent)
    assert final.state == "not_found"


# --- error bodies -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", ProviderError(None, None, None, None)),
        (b"not json at all", ProviderError("not json at all", None, None, None)),
        (b"[1, 2]", ProviderError("[1, 2]", None, None, None)),
        (b'{"error": "Not Found"}', ProviderError("Not Found", None, None, None)),
        (
            b'{"error": {"code": 404, "message": "No such response"}}',
            ProviderError("No such response", None, None, None),
        ),
        (
            b'{"error": {"message": ["x"], "type": {"a": 1}, "code": true}}',
            ProviderError(None, None, None, None),
        ),
        (
            b'{"code": "Throttling", "message": "slow down", "request_id": "abc-1"}',
            ProviderError("slow down", "Throttling", None, "abc-1"),
        ),
        (
            b'{"error": {"message": "m", "type": "t", "code": "c"}, "request_id": "r1"}',
            ProviderError("m", "c", "t", "r1"),
        ),
        (b'{"detail": "Not authenticated"}', ProviderError("Not authenticated", None, None, None)),
        (b'{"request_id": "bad id with spaces"}', ProviderError(None, None, None, None)),
    ],
)
def test_provider_error_parsing(body: bytes, expected: ProviderError) -> None:
    assert ProviderError.from_api(body) == expected


def test_provider_error_request_id_from_header() -> None:
    error = ProviderError.from_api(b"{}", {"X-Request-Id": "req_7"})
    assert error.request_id == "req_7"
    body_first = ProviderError.from_api(b'{"request_id": "body_1"}', {"x-request-id": "h"})
    assert body_first.request_id == "body_1"


def test_provider_text_is_one_bounded_line() -> None:
    message = "a\nb\x1b[31m" + "x" * 5000
    error = ProviderError.from_api(orjson.dumps({"error": {"message": message}}))
    assert error.message is not None
    assert "\n" not in error.message
    assert "\x1b" not in error.message
    assert len(error.message) <= 300


# --- exceptions -------------------------------------------------------------------------


class ClientConnectionError(Exception):
    """Stands in for aiohttp's class of that name (matched by name, not by import)."""


class ServerDisconnectedError(ClientConnectionError):
    pass


class ClientPayloadError(Exception):
    pass


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (TimeoutError(), "timed out (TimeoutError)"),
        (TimeoutError("read"), "timed out (TimeoutError: read)"),
        (
            ConnectionResetError(104, "Connection reset by peer"),
            "connection failed (ConnectionResetError: [Errno 104] Connection reset by peer)",
        ),
        (OSError("network unreachable"), "connection failed (OSError: network unreachable)"),
        (
            ServerDisconnectedError("Server disconnected"),
            "connection failed (ServerDisconnectedError: Server disconnected)",
        ),
        (
            ClientPayloadError("Response payload is not completed"),
            "connection failed (ClientPayloadError: Response payload is not completed)",
        ),
        (ValueError("weird"), "ValueError: weird"),
        (RuntimeError(), "RuntimeError"),
    ],
)
def test_exceptions_are_retried(exc: Exception, reason: str) -> None:
    outcome = classify_exception(exc, attempt=2, policy=POLICY, rand=0.3)
    # No answer at all (reset, closed before answering) may be the endpoint's fault: marked,
    # so the breaker holds it; timeouts, payload errors and the rest are about the ID.
    connect = isinstance(exc, ConnectionError | ServerDisconnectedError)
    assert outcome == Retry(backoff_delay(2, POLICY, 0.3), reason, symptom="connect" if connect else None)


def test_exception_gives_up_at_max_attempts() -> None:
    outcome = classify_exception(TimeoutError(), attempt=8, policy=POLICY, rand=0.0)
    assert outcome == Permanent("failed", "gave up after 8 attempts: timed out (TimeoutError)")


@pytest.mark.parametrize("exc", [asyncio.CancelledError(), KeyboardInterrupt(), SystemExit(1)])
def test_shutdown_exceptions_are_not_outcomes(exc: BaseException) -> None:
    with pytest.raises(type(exc)):
        classify_exception(exc, attempt=1, policy=POLICY, rand=0.0)


def test_aiohttp_exceptions_if_available() -> None:
    aiohttp = pytest.importorskip("aiohttp")
    for exc in (
        aiohttp.ServerDisconnectedError(),
        aiohttp.ClientPayloadError("payload"),
        aiohttp.ClientConnectionError("conn"),
        aiohttp.ServerTimeoutError("read timeout"),
    ):
        outcome = classify_exception(exc, attempt=1, policy=POLICY, rand=0.0)
        assert isinstance(outcome, Retry)
        assert outcome.reason.startswith(("connection failed (", "timed out ("))


def test_exception_reason_redacts_keys() -> None:
    outcome = classify_exception(
        ValueError(f"bad header Authorization: Bearer {FAKE_KEY}"), attempt=1, policy=POLICY, rand=0
    )
    assert isinstance(outcome, Retry)
    assert FAKE_KEY not in outcome.reason
    assert "FAKEKEY" not in outcome.reason


# --- no secrets in reasons --------------------------------------------------------------

SECRET_CASES: list[tuple[int, bytes | dict[str, Any]]] = [
    (200, b"not json"),
    (200, {"id": "resp_other"}),
    (401, b""),
    (401, openai_error(f"Incorrect API key provided: {FAKE_KEY}.", None, "invalid_api_key")),
    (403, dashscope_error("AccessDenied", f"key {FAKE_KEY} denied")),
    (400, dashscope_error("Arrearage", "arrears")),
    (400, openai_error(f"Bearer {FAKE_KEY} is malformed", "invalid_request_error")),
    (404, NOT_FOUND),
    (408, b""),
    (422, b"unprocessable"),
    (429, dashscope_error("Throttling", "slow")),
    (429, openai_error("quota", "insufficient_quota", "insufficient_quota")),
    (500, f"<html>{FAKE_KEY}</html>".encode()),
    (503, b""),
    (302, b""),
]


@pytest.mark.parametrize(("status", "body"), SECRET_CASES)
@pytest.mark.parametrize("profile", ["dashscope", "openai", "generic"])
@pytest.mark.parametrize("attempt", [1, 8])
@pytest.mark.parametrize("previous", [None, 404])
def test_no_reason_contains_the_key(
    status: int,
    body: bytes | dict[str, Any],
    profile: ProviderProfile,
    attempt: int,
    previous: int | None,
) -> None:
    headers = {**SECRET_HEADERS, "Retry-After": "3", "x-request-id": "req_1"}
    outcome = classify(status, body, headers=headers, profile=profile, attempt=attempt, previous=previous)
    assert not isinstance(outcome, Archived)
    assert outcome.reason
    assert FAKE_KEY not in outcome.reason
    assert "FAKEKEY" not in outcome.reason
    assert "Bearer" not in outcome.reason
