"""The base URL is checked when Settings are built: pure functions of archiver.settings."""

from __future__ import annotations

import pytest

from archiver.errors import ConfigError
from archiver.settings import Settings, check_base_url, display_base_url, is_loopback


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("http://127.0.0.1:8765/v1", True),
        ("http://127.255.3.4/v1", True),
        ("http://localhost:80/v1", True),
        ("http://LOCALHOST/v1", True),
        ("http://[::1]:8080/v1", True),
        ("http://[::ffff:127.0.0.1]/v1", True),
        ("http://127.evil.example/v1", False),  # a name that starts like an address is a name
        ("http://128.0.0.1/v1", False),
        ("http://[::2]/v1", False),
        ("http://localhost.evil.example/v1", False),
        ("http://[::1", False),  # malformed: never loopback, never an exception
        ("https://api.openai.com/v1", False),
    ],
)
def test_is_loopback(url: str, loopback: bool) -> None:
    assert is_loopback(url) is loopback


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://[::1]:8080/v1", "http://[::1]:8080/v1"),
        ("http://[2001:db8::7]/v1", "http://[2001:db8::7]/v1"),
        ("https://user:pw@api.example.test:8443/v1?key=k#frag", "https://api.example.test:8443/v1"),
        ("https://api.example.test/compatible-mode/v1", "https://api.example.test/compatible-mode/v1"),
        ("http://user:pw@[::1/v1", "http://***@[::1/v1"),  # unparseable: still no password
    ],
)
def test_display_base_url_keeps_ipv6_brackets_and_drops_credentials(url: str, shown: str) -> None:
    assert display_base_url(url) == shown


@pytest.mark.parametrize(
    "url",
    [
        "https://api.openai.com/v1",
        "https://dashscope.aliyuncs.com/compatible-mode/v1",
        "http://127.0.0.1:9/v1",
        "http://[::1]:9/v1",
        "https://[2001:db8::7]:8443/v1",
    ],
)
def test_good_base_urls_pass(url: str) -> None:
    check_base_url(url)
    assert Settings(base_url=url).base_url == url


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://user:hunter2@api.example.test/v1", "must not contain user info"),
        ("https://user@api.example.test/v1", "must not contain user info"),
        ("https://api.example.test/v1?api-key=hunter2", "must not have a query string or fragment"),
        ("https://api.example.test/v1#hunter2", "must not have a query string or fragment"),
        ("http://api.example.test/v1", "plain http:// to another host"),
        ("ftp://api.example.test/v1", "must start with http:// or https://"),
        ("api.example.test/v1", "must start with http:// or https://"),
        ("http://[::1", "malformed"),
        ("https://api.example.test:https/v1", "malformed"),
        ("https://api.example.test:99999/v1", "malformed"),
        ("https:///v1", "has no host"),
        ("https://user:hunter2@[::1/v1", "malformed"),
    ],
)
def test_bad_base_urls_are_one_line_config_errors_without_the_secret(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings(base_url=url)
    text = str(caught.value)
    assert message in text
    assert "hunter2" not in text
    assert "\n" not in text
    assert caught.value.exit_code == 2


def test_plain_http_to_another_host_is_allowed_only_when_asked() -> None:
    settings = Settings(base_url="http://api.example.test/v1", allow_insecure_http=True)
    assert settings.allow_insecure_http
    with pytest.raises(ConfigError, match="--allow-insecure-http"):
        Settings(base_url="http://api.example.test/v1")
    # The exception is for http:// only: credentials in the URL are refused regardless.
    with pytest.raises(ConfigError, match="user info"):
        Settings(base_url="http://u:p@api.example.test/v1", allow_insecure_http=True)


def test_an_ipv6_host_keeps_its_brackets_in_the_message() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings(base_url="http://[2001:db8::7]:8080/v1?x=1")
    assert "'http://[2001:db8::7]:8080/v1'" in str(caught.value)
