"""structlog set-up: JSON lines when stderr is not a terminal, a console renderer on one.

Logs go to stderr: stdout carries command output that scripts pipe (``show``,
``status --json``). journald collects both streams under systemd.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

# structlog imports rich when it is installed (archiver depends on it for the progress
# bar), only for rich tracebacks in its console renderer. That import cost every command
# ~30 ms before its first line of work. A None entry in sys.modules makes an import fail
# (see the documentation of sys.modules), so structlog takes rich for absent and console
# tracebacks are plain text; the entry goes at once, and rich imports normally later.
if "rich" in sys.modules:
    import structlog
else:
    sys.modules["rich"] = None  # type: ignore[assignment]
    try:
        import structlog
    finally:
        del sys.modules["rich"]

from archiver.redaction import redact, redact_value, register_secret

__all__ = [
    "configure_logging",
    "get_logger",
    "logging_config",
    "redact",
    "redact_base_url",
    "register_secret",
]

_CONFIGURED: dict[str, Any] = {"level": "info", "json": None}


def _redact_processor(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    # Every value, however nested (lists, dicts, exceptions, the formatted traceback).
    for key, value in event_dict.items():
        if not isinstance(value, (int, float, bool)) and value is not None:
            event_dict[key] = redact_value(value)
    return event_dict


class _RedactingStderrHandler(logging.Handler):
    """The standard library's last-resort handler (warnings of asyncio, aiohttp ...), redacted.

    It writes to whatever ``sys.stderr`` is at the time, as :data:`logging.lastResort` does.
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(redact(self.format(record)) + "\n")
            sys.stderr.flush()
        except Exception:  # a closed stream: nowhere left to report it
            self.handleError(record)


def configure_logging(level: str = "info", stream: TextIO | None = None, json: bool | None = None) -> None:
    """Configure structlog once per process.

    Args:
        level: minimum level name.
        stream: where lines go (default stderr).
        json: force JSON (True) or console (False); default: JSON unless a terminal.
    """
    _CONFIGURED.update(level=level, json=json)
    logging.lastResort = _RedactingStderrHandler(logging.WARNING)
    out = stream or sys.stderr
    use_json = (not out.isatty()) if json is None else json
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redact_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


def logging_config() -> tuple[str, bool | None]:
    """(level, json) as last given to :func:`configure_logging`, for a child process to copy."""
    return _CONFIGURED["level"], _CONFIGURED["json"]


def get_logger() -> Any:
    """The project's logger."""
    return structlog.get_logger("archiver")


def redact_base_url(url: str) -> str:
    """The URL without user info or query string (which may carry credentials)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
