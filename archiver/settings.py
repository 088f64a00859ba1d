"""Settings: one frozen dataclass built from CLI flags and ``ARCHIVER_*`` variables.

Precedence: command-line flag > environment variable > default. The API key is never
taken from a flag (it would show in ``ps``): only from the environment or a key file.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from archiver.errors import ConfigError

DEFAULT_DATABASE_URL = "sqlite:///archive.db"
DEFAULT_BASE_URL = "https://dashscope.aliyuncs.com/compatible-mode/v1"
API_KEY_VARIABLES = ("ARCHIVER_API_KEY", "DASHSCOPE_API_KEY")
CREDENTIAL_NAME = "api_key"  # systemd LoadCredential=api_key:/etc/archiver/api_key


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
    max_held_mb: float = 64.0
    max_body_mb: float = 64.0
    lease_seconds: float = 60.0
    grace_seconds: float = 20.0
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
    retention_days: float | None = None
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    metrics_refresh: float = 15.0
    with_input_items: bool = False
    writer: str = "auto"
    owner: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ConfigError("concurrency must be at least 1")
        if self.max_attempts < 1:
            raise ConfigError("max-attempts must be at least 1")
        if self.batch_size < 1:
            raise ConfigError("batch size must be at least 1")
        if self.max_held_mb <= 0:
            raise ConfigError("max-held-mb must be positive")
        if self.max_body_mb <= 0:
            raise ConfigError("max-body-mb must be positive")
        if self.lease_seconds < 1:
            raise ConfigError("lease-seconds must be at least 1")
        if self.provider not in ("auto", "dashscope", "openai", "generic"):
            raise ConfigError(f"provider must be auto, dashscope, openai or generic, not {self.provider!r}")
        if self.writer not in ("auto", "process", "inline"):
            raise ConfigError(f"writer must be auto, process or inline, not {self.writer!r}")
        if self.max_rps is not None and self.max_rps <= 0:
            raise ConfigError("max-rps must be positive")
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"base URL must start with http:// or https://, got {self.base_url!r}")

    @property
    def profile(self) -> str:
        """The provider profile in force: ``provider``, or chosen from the base URL."""
        from archiver.policy import profile_for_base_url

        return profile_for_base_url(self.base_url) if self.provider == "auto" else self.provider

    @property
    def retention_s(self) -> float | None:
        """How long the provider keeps responses, in seconds (None: unknown)."""
        from archiver.policy import retention_seconds

        return retention_seconds(self.profile, self.retention_days)  # type: ignore[arg-type]

    def with_changes(self, **changes: Any) -> Settings:
        """A copy with some fields replaced."""
        return replace(self, **changes)


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
            value = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            if i == 0 and (key_file or env.get("ARCHIVER_API_KEY_FILE")):
                raise ConfigError(f"API key file not found: {path}") from None
            continue
        except OSError as exc:
            raise ConfigError(f"cannot read API key file {path}: {exc.strerror}") from None
        if value:
            return value
    return None
