"""Secrets never reach a log line."""

from __future__ import annotations

import io
import json

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
    from archiver.db import redact_url

    assert redact_url("postgresql://u:secret@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact_url("sqlite:///demo.db") == "sqlite:///demo.db"
