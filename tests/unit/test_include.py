"""include[]: which 400 names which value, the defaults per provider, --include / ARCHIVER_INCLUDE."""

from __future__ import annotations

import orjson
import pytest

from archiver.cli import build_parser, settings_from
from archiver.errors import ConfigError
from archiver.outcomes import Permanent, StopAll
from archiver.policy import (
    OPENAI_INCLUDE,
    RetryPolicy,
    classify_input_items_page,
    classify_response,
    default_include,
    rejected_include_value,
)
from archiver.settings import Settings

SENT = ("reasoning.encrypted_content", "message.output_text.logprobs", "file_search_call.results")


def error_body(**error: str) -> bytes:
    return orjson.dumps({"error": error})


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # OpenAI: param is the value's index; the message lists the values still supported.
        (
            error_body(
                message="Invalid value: 'message.output_text.logprobs'. Supported values are: "
                "'reasoning.encrypted_content', 'file_search_call.results'.",
                param="include[1]",
                code="invalid_value",
            ),
            "message.output_text.logprobs",
        ),
        (error_body(message="bad", param="include[]"), None),
        (error_body(message="bad", param="include[7]"), None),  # no such index: nothing named
        (error_body(message="not supported", param="file_search_call.results"), "file_search_call.results"),
        # Message only: the value named first is the rejected one, not the supported list after it.
        (
            error_body(
                message="Invalid value: 'file_search_call.results'. Supported values are: "
                "'reasoning.encrypted_content', 'message.output_text.logprobs'."
            ),
            "file_search_call.results",
        ),
        # DashScope-style envelope: top-level code and message.
        (
            orjson.dumps(
                {"code": "InvalidParameter", "message": "include reasoning.encrypted_content unsupported"}
            ),
            "reasoning.encrypted_content",
        ),
        (
            orjson.dumps({"error": "unknown include: message.output_text.logprobs"}),
            "message.output_text.logprobs",
        ),
        # A 400 about something else keeps its meaning.
        (error_body(message="The request is malformed: parameter 'response_id' is invalid."), None),
        (b"<html>400 Bad Request</html>", None),
        (b"", None),
    ],
)
def test_rejected_include_value(body: bytes, expected: str | None) -> None:
    assert rejected_include_value(400, body, SENT) == expected


def test_only_a_400_with_values_sent_names_one() -> None:
    body = error_body(message="Invalid value: 'reasoning.encrypted_content'.", param="include[0]")
    assert rejected_include_value(400, body, SENT) == "reasoning.encrypted_content"
    assert rejected_include_value(422, body, SENT) is None
    assert rejected_include_value(404, body, SENT) is None
    assert rejected_include_value(400, body, ()) is None
    # A value that was not sent is never "rejected".
    assert rejected_include_value(400, body, ("file_search_call.results",)) is None


def _classify(status: int, body: bytes, include: tuple[str, ...]) -> object:
    return classify_response(
        status_code=status,
        headers={},
        body=body,
        requested_id="resp_x",
        attempt=1,
        previous_status_code=None,
        policy=RetryPolicy(max_attempts=1),
        profile="openai",
        now=0.0,
        rand=0.0,
        include=include,
    )


def test_classification_flags_the_rejected_value_and_keeps_other_400s() -> None:
    body = error_body(message="Invalid value: 'message.output_text.logprobs'.", param="include[1]")
    outcome = _classify(400, body, SENT)
    assert isinstance(outcome, Permanent) and outcome.rejected_include == "message.output_text.logprobs"
    assert outcome.status_code == 400 and outcome.symptom is None  # a per-ID answer: the endpoint works
    assert "message.output_text.logprobs" in outcome.reason
    # Without that value sent the same 400 is an ordinary failure of the ID.
    plain = _classify(400, body, ())
    assert isinstance(plain, Permanent) and plain.rejected_include is None and plain.state == "failed"
    # Billing refusals stay account-wide even when the message happens to name a value.
    arrears = orjson.dumps({"code": "Arrearage", "message": "reasoning.encrypted_content: Access denied"})
    assert isinstance(_classify(400, arrears, SENT), StopAll)


def test_input_items_page_flags_the_rejected_value() -> None:
    body = error_body(message="Invalid value: 'reasoning.encrypted_content'.", param="include[0]")
    page = classify_input_items_page(
        status_code=400,
        headers={},
        body=body,
        attempt=1,
        policy=RetryPolicy(),
        profile="generic",
        now=0.0,
        rand=0.0,
        include=SENT,
    )
    assert isinstance(page, Permanent) and page.rejected_include == "reasoning.encrypted_content"


def test_defaults_by_provider_profile() -> None:
    assert default_include("openai") == OPENAI_INCLUDE and len(OPENAI_INCLUDE) == 7
    assert default_include("dashscope") == () and default_include("generic") == ()
    assert Settings(base_url="https://api.openai.com/v1").include_values == OPENAI_INCLUDE
    assert Settings().include_values == ()  # the DashScope default base URL
    assert Settings(base_url="https://example.com/v1").include_values == ()
    assert Settings(base_url="https://example.com/v1", provider="openai").include_values == OPENAI_INCLUDE
    assert Settings(base_url="https://api.openai.com/v1", include=()).include_values == ()
    assert Settings(include=("reasoning.encrypted_content",)).include_values == (
        "reasoning.encrypted_content",
    )


def _settings(argv: list[str], env: dict[str, str]) -> Settings:
    return settings_from(build_parser().parse_args(["run", *argv]), env)


def test_flag_and_variable() -> None:
    openai = {"ARCHIVER_BASE_URL": "https://api.openai.com/v1"}
    assert _settings([], openai).include_values == OPENAI_INCLUDE
    assert _settings([], {**openai, "ARCHIVER_INCLUDE": ""}).include_values == ()  # explicit empty: none
    assert _settings([], {**openai, "ARCHIVER_INCLUDE": " , "}).include_values == ()
    assert _settings(["--include", ""], openai).include_values == ()
    value = " reasoning.encrypted_content, file_search_call.results,reasoning.encrypted_content "
    assert _settings([], {"ARCHIVER_INCLUDE": value}).include_values == (
        "reasoning.encrypted_content",
        "file_search_call.results",
    )
    # The flag wins over the variable.
    chosen = _settings(["--include", "file_search_call.results"], {"ARCHIVER_INCLUDE": "x.y"})
    assert chosen.include_values == ("file_search_call.results",)


def test_bad_values_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match=r"ARCHIVER_INCLUDE=.*not an include value"):
        _settings([], {"ARCHIVER_INCLUDE": "reasoning.encrypted_content,a b"})
    with pytest.raises(ConfigError, match="include value"):
        Settings(include=("a&b=c",))
