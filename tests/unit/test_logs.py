"""Secrets never reach a log line."""

from __future__ import annotations

import io
import json
import logging

import pytest

from archiver.logs import configure_logging, get_logger, redact, redact_base_url, register_secret


def test_base_urls_are_logged_without_credentials() -> None:
    assert redact_base_url("https://user:s3cret@gw.example:8443/v1?key=abc") == "https://gw.example:8443/v1"
    assert redact_base_url("https://dashscope.aliyuncs.com/compatible-mode/v1") == (
        "https://dashscope.aliyuncs.com/compatible-mode/v1"
    )


def test_registered_secrets_and_bearer_tokens_are_redacted_in_json_lines() -> None:
    register_secret("sk-test-secret-123456")
    out = io.StringIO()
    configure_logging("info", stream=out, json=True)
    get_logger().warning(
        "archiver.fetch_failed",
        error="401 for key sk-test-secret-123456",
        header="Authorization: Bearer abc.def.ghi",
    )
    line = json.loads(out.getvalue().splitlines()[-1])
    assert line["event"] == "archiver.fetch_failed" and line["level"] == "warning"
    assert "sk-test-secret-123456" not in out.getvalue()
    assert line["error"] == "401 for key ***"
    assert "abc.def.ghi" not in line["header"]
    assert redact("nothing secret here") == "nothing secret here"


def test_database_urls_are_shown_as_written_without_the_password() -> None:
    from archiver.dburl import redact_url

    assert redact_url("postgresql://u:secret@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact_url("sqlite:///demo.db") == "sqlite:///demo.db"


def test_nested_values_and_exceptions_are_redacted() -> None:
    key = "Zx9logsNESTEDkey4471"
    register_secret(key)
    out = io.StringIO()
    configure_logging("info", stream=out, json=True)
    try:
        raise RuntimeError(f"server said {key}")
    except RuntimeError as exc:
        get_logger().error(
            "archiver.task_crashed",
            errors=[f"first {key}", {"body": key, "codes": [1, 2]}],
            headers={"x-request-id": key},
            error=exc,
            exc_info=True,
        )
    text = out.getvalue()
    assert key not in text
    line = json.loads(text.splitlines()[-1])
    assert line["errors"] == ["first ***", {"body": "***", "codes": [1, 2]}]
    assert line["headers"] == {"x-request-id": "***"}
    assert line["error"] == "RuntimeError: server said ***"
    assert "Traceback" in line["exception"] and "server said ***" in line["exception"]


def test_standard_library_warnings_are_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    # asyncio and aiohttp log through the standard library; with no handler configured it
    # prints through logging.lastResort, which configure_logging makes redacting.
    key = "Zx9logsSTDLIBkey5582"
    register_secret(key)
    configure_logging("info", stream=io.StringIO(), json=True)
    logger = logging.getLogger("archiver-test-stdlib")
    logger.propagate = False  # pytest's own handlers sit on the root logger
    logger.warning("Unclosed connection to %s", key)
    assert capsys.readouterr().err == "Unclosed connection to ***\n"


def test_a_standard_library_record_with_an_exception_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """SQLAlchemy logs 'Error closing cursor' with exc_info when Ctrl-C cancels a read: one
    line (the exception's type and message), not a traceback (kept at debug level)."""
    key = "Zx9logsSTDLIBexc7731"
    register_secret(key)
    configure_logging("info", stream=io.StringIO(), json=True)
    logger = logging.getLogger("archiver-test-stdlib-exc")
    logger.propagate = False
    try:
        raise ValueError(f"Connection closed\nby {key}")
    except ValueError:
        logger.error("Error closing cursor", exc_info=True)
    assert capsys.readouterr().err == "Error closing cursor (ValueError: Connection closed by ***)\n"
