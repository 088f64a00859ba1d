"""Settings: one frozen dataclass built from CLI flags and ``ARCHIVER_*`` variables.

Precedence: command-line flag > environment variable > default. The API key is never
taken from a flag (it would show in ``ps``): only from the environment or a key file.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit, urlunsplit

from archiver.errors import ConfigError
from archiver.ranges import SETTING_RANGES
from archiver.secret_files import read_small_text

DEFAULT_DATABASE_URL = "sqlite:///archive.db"
DEFAULT_BASE_URL = "https://dashscope.aliyuncs.com/compatible-mode/v1"
API_KEY_VARIABLES = ("ARCHIVER_API_KEY", "DASHSCOPE_API_KEY")
CREDENTIAL_NAME = "api_key"  # systemd LoadCredential=api_key:/etc/archiver/api_key
PROVIDERS = ("auto", "dashscope", "openai", "generic")
WRITERS = ("auto", "process", "inline")
NORMALIZE_MODES = ("full", "summary")
"""``--normalize``: which normalized rows an archive keeps (see :mod:`archiver.projection`)."""
INCLUDE_VALUE = re.compile(r"[A-Za-z0-9_.\-]{1,128}\Z")
"""One ``include[]`` value: a dotted field path such as ``reasoning.encrypted_content``."""
_HEADER_SAFE = re.compile(r"[\x21-\x7e]+\Z")
"""What an API key may hold: printable ASCII without spaces (it goes into a header)."""
SECRET_FILE_LIMIT = 64 * 1024
_NOT_IN_HOSTS = frozenset('<>"{}|\\^`')
"""A key, token or secret file larger than this is not one (``/dev/zero``, a log file)."""
DEFAULT_SOURCE = "default"
"""The source of queue rows that name none, and the one source of the flag form."""
SOURCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}\Z")
"""A source name: letters, digits and ``_ . -``, up to 64 characters, not starting with a sign."""


@dataclass(frozen=True)
class Settings:
    """Everything a command needs. Build with :func:`load_settings`."""

    database_url: str = DEFAULT_DATABASE_URL
    base_url: str = DEFAULT_BASE_URL
    api_key: str | None = field(default=None, repr=False)
    request_timeout: float = 60.0
    connect_timeout: float = 10.0
    concurrency: int = 16
    max_attempts: int = 8
    batch_size: int = 200
    max_held_mb: float = 32.0
    max_body_mb: float = 16.0
    lease_seconds: float = 60.0
    grace_seconds: float = 20.0
    final_write_seconds: float = 10.0
    """After a stop signal, how long past ``grace_seconds`` the last database writes may
    take (see :mod:`archiver.deadline`); ``enqueue``, ``renormalize`` and ``compact`` have
    no grace period, so this alone."""
    poll_interval: float = 2.0
    drain_horizon: float = 60.0
    backoff_base: float = 1.0
    backoff_cap: float = 300.0
    max_server_wait: float = 900.0
    not_found_recheck: float = 30.0
    repoll: float = 5.0
    max_polls: int = 200
    max_rps: float | None = None
    provider: str = "auto"
    allow_insecure_http: bool = False
    retention_days: float | None = None
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    metrics_refresh: float = 15.0
    ingest_token_file: str | None = None
    webhook_secret_file: str | None = None
    with_input_items: bool = False
    include: tuple[str, ...] | None = None
    """``include[]`` values to send; None: the provider profile's default (see :attr:`include_values`)."""
    writer: str = "auto"
    config: str | None = None
    """The sources file (``--config``); None: the one source ``default`` of the flags."""
    source: str = DEFAULT_SOURCE
    """The source this settings object describes (run), or enqueues to (enqueue)."""
    explicit: frozenset[str] = field(default=frozenset(), repr=False, compare=False)
    """Fields set by a flag or variable (not defaulted): see :func:`archiver.sources.source_settings`."""
    normalize: str | None = None
    """The archive's normalize mode asked for; None: the archive's own (``full`` for a new one)."""
    owner: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")

    def __post_init__(self) -> None:
        for name, allowed in SETTING_RANGES.items():
            value = getattr(self, name)
            problem = None if value is None else allowed.problem(value)
            if problem:
                flag = name.replace("_", "-")
                raise ConfigError(f"--{flag} (ARCHIVER_{name.upper()}) {problem}, not {value!r}")
        if self.api_key is not None and not _HEADER_SAFE.match(self.api_key):
            raise ConfigError(
                "the API key has a space, a line break, a control character or a character outside "
                "ASCII (a key file with two lines? a key pasted in two parts?): it cannot be sent in "
                "an Authorization header"
            )
        if not self.metrics_host.strip():
            raise ConfigError(
                "--metrics-host (ARCHIVER_METRICS_HOST) is empty: name the address to listen on, "
                "127.0.0.1 for this host only or 0.0.0.0 for every interface"
            )
        if self.provider not in PROVIDERS:
            raise ConfigError(f"provider must be one of {', '.join(PROVIDERS)}, not {self.provider!r}")
        if self.writer not in WRITERS:
            raise ConfigError(f"writer must be one of {', '.join(WRITERS)}, not {self.writer!r}")
        if self.normalize is not None and self.normalize not in NORMALIZE_MODES:
            raise ConfigError(
                f"normalize must be one of {', '.join(NORMALIZE_MODES)}, not {self.normalize!r}"
            )
        for value in self.include or ():
            if not INCLUDE_VALUE.match(value):
                raise ConfigError(
                    f"include value {value[:60]!r} is not valid: use letters, digits and _ . - "
                    "(e.g. reasoning.encrypted_content)"
                )
        if not SOURCE_NAME.match(self.source):
            raise ConfigError(
                f"source name {self.source[:70]!r} is not valid: use letters, digits and _ . - "
                "(up to 64 characters)"
            )
        check_base_url(self.base_url, allow_insecure_http=self.allow_insecure_http)

    @property
    def profile(self) -> str:
        """The provider profile in force: ``provider``, or chosen from the base URL."""
        from archiver.policy import profile_for_base_url

        return profile_for_base_url(self.base_url) if self.provider == "auto" else self.provider

    @property
    def include_values(self) -> tuple[str, ...]:
        """The ``include[]`` values in force: ``include``, or the provider profile's default."""
        from archiver.policy import default_include

        if self.include is not None:
            return self.include
        return default_include(self.profile)  # type: ignore[arg-type]

    @property
    def retention_s(self) -> float | None:
        """How long the provider keeps responses, in seconds (None: unknown)."""
        from archiver.policy import retention_seconds

        return retention_seconds(self.profile, self.retention_days)  # type: ignore[arg-type]

    def with_changes(self, **changes: Any) -> Settings:
        """A copy with some fields replaced."""
        return replace(self, **changes)


def _split_base_url(url: str) -> tuple[SplitResult, str, int | None]:
    """(parts, host, port) of a base URL; ConfigError for one that does not parse."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname or ""
        port = parts.port
    except ValueError as exc:  # "Invalid IPv6 URL", "Port could not be cast ...", out of range
        raise ConfigError(f"base URL is malformed ({exc}): {_without_userinfo(url)!r}") from None
    return parts, host, port


def _without_userinfo(url: str) -> str:
    """A URL that failed to parse, for a message: its user info (and password) as ``***``."""
    text = url.strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        return text[:200]
    authority = rest[: min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))]
    if "@" in authority:
        rest = "***@" + rest[authority.rindex("@") + 1 :]
    return f"{scheme}://{rest}"[:200]


def _netloc(host: str, port: int | None) -> str:
    shown = f"[{host}]" if ":" in host else host  # an IPv6 address keeps its brackets
    return f"{shown}:{port}" if port is not None else shown


def display_base_url(url: str) -> str:
    """The base URL as logs and messages show it: no user info, query or fragment.

    IPv6 hosts keep their brackets (``http://[::1]:8080/v1``). A URL that does not parse
    is shown without anything that could be a password.
    """
    try:
        parts, host, port = _split_base_url(url)
    except ConfigError:
        return _without_userinfo(url)
    return urlunsplit((parts.scheme, _netloc(host, port), parts.path, "", ""))


def is_loopback(base_url: str) -> bool:
    """True when the URL's host is this machine: ``localhost``, 127.0.0.0/8 or ``::1``."""
    try:
        _, host, _ = _split_base_url(base_url)
    except ConfigError:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])  # a zone (fe80::1%eth0) is not the address
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def check_base_url(url: str, *, allow_insecure_http: bool = False) -> None:
    """Refuse a base URL that cannot be right, or that would send the key in the clear.

    Raises:
        ConfigError: one line, which never repeats a password given in the URL.
    """
    stray = [(n, char) for n, char in enumerate(url.strip()) if char.isspace() or not char.isprintable()]
    if stray:  # urlsplit drops tabs and line breaks without a word, and a space reaches DNS
        where, char = stray[0]
        raise ConfigError(
            f"base URL has {char!r} at character {where + 1}: spaces and control characters are "
            "never part of one (e.g. https://api.openai.com/v1)"
        )
    parts, host, _ = _split_base_url(url)
    if parts.scheme not in ("http", "https"):
        raise ConfigError(f"base URL must start with http:// or https://, got {display_base_url(url)!r}")
    if not host:
        raise ConfigError(f"base URL has no host: {display_base_url(url)!r}")
    if any(char in _NOT_IN_HOSTS for char in host):
        raise ConfigError(f"base URL host {host!r} is not a host name: {display_base_url(url)!r}")
    shown = display_base_url(url)
    if parts.username is not None or parts.password is not None:
        raise ConfigError(
            f"base URL must not contain user info (user:password@): {shown!r}; "
            "the API key goes in ARCHIVER_API_KEY or a key file"
        )
    if parts.query or parts.fragment:
        raise ConfigError(f"base URL must not have a query string or fragment (?...#...): {shown!r}")
    if parts.scheme == "http" and not allow_insecure_http and not is_loopback(url):
        raise ConfigError(
            f"base URL {shown!r} is plain http:// to another host: the API key would cross the "
            "network unencrypted; use https://, or --allow-insecure-http (ARCHIVER_ALLOW_INSECURE_HTTP=1)"
        )


def read_secret_file(path: str, what: str) -> str:
    """The stripped text of a secret file (a key, a token, a webhook secret).

    Raises:
        ConfigError: one line naming ``what`` and the path: missing, unreadable, not
            UTF-8, or empty.
    """
    try:
        value = read_small_text(Path(path), what, SECRET_FILE_LIMIT).strip()
    except FileNotFoundError:
        raise ConfigError(f"{what} file not found: {path}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} file is not UTF-8 text: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} file {path}: {exc.strerror or exc}") from None
    if not value:
        raise ConfigError(f"{what} file is empty: {path}")
    return value


def read_api_key(env: Mapping[str, str], key_file: str | None = None) -> str | None:
    """Find the API key: ARCHIVER_API_KEY, DASHSCOPE_API_KEY, a key file, or systemd credentials.

    Args:
        env: the environment to read.
        key_file: an explicit key file (``--api-key-file`` / ``ARCHIVER_API_KEY_FILE``).
    """
    for name in API_KEY_VARIABLES:
        value = env.get(name, "").strip()
        if value:
            return value
    candidates: list[Path] = []
    if key_file:
        candidates.append(Path(key_file))
    elif env.get("ARCHIVER_API_KEY_FILE"):
        candidates.append(Path(env["ARCHIVER_API_KEY_FILE"]))
    if env.get("CREDENTIALS_DIRECTORY"):
        candidates.append(Path(env["CREDENTIALS_DIRECTORY"]) / CREDENTIAL_NAME)
    for i, path in enumerate(candidates):
        try:
            value = read_small_text(path, "API key", SECRET_FILE_LIMIT).strip()
        except FileNotFoundError:
            if i == 0 and (key_file or env.get("ARCHIVER_API_KEY_FILE")):
                raise ConfigError(f"API key file not found: {path}") from None
            continue
        except UnicodeDecodeError:
            raise ConfigError(f"API key file is not UTF-8 text: {path}") from None
        except OSError as exc:
            raise ConfigError(f"cannot read API key file {path}: {exc.strerror or exc}") from None
        if value:
            return value
    return None
