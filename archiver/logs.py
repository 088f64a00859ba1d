"""structlog set-up: JSON lines when stderr is not a terminal, a console renderer on one.

Logs go to stderr: stdout carries command output that scripts pipe (``show``,
``status --json``). journald collects both streams under systemd.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Iterable, MutableMapping
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
from archiver.streams import write_line

__all__ = [
    "configure_logging",
    "get_logger",
    "logging_config",
    "redact",
    "redact_base_url",
    "register_secret",
    "send_lines_to",
]

_CONFIGURED: dict[str, Any] = {"level": "info", "json": None}

# Where rendered lines go instead of the stream while a progress bar is live (see
# send_lines_to), and which events are left out meanwhile.
_ROUTE: dict[str, Any] = {"sink": None, "quiet": frozenset()}


def send_lines_to(sink: Callable[[str], None] | None, *, quiet: Iterable[str] = ()) -> None:
    """Send every log line to ``sink`` (None: back to the configured stream).

    A live progress bar owns the terminal: a line written straight to it lands on the bar's
    unfinished line. The bar passes a sink that prints above itself (``console.print``).

    Args:
        sink: called with each rendered line (no newline), or None to stop.
        quiet: event names not printed while the sink is set, unless the level is debug
            (the per-batch lines a bar already shows as counts).
    """
    hidden = frozenset(quiet) if sink is not None and _CONFIGURED["level"] != "debug" else frozenset()
    _ROUTE.update(sink=sink, quiet=hidden)


def _drop_quiet_events(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    if _ROUTE["quiet"] and event_dict.get("event") in _ROUTE["quiet"]:
        raise structlog.DropEvent
    return event_dict


class _LineLogger:
    """structlog's output end: one rendered line to the sink of :func:`send_lines_to`, else the stream."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()  # the SQLite write thread logs too

    def msg(self, message: str) -> None:
        """Write one line."""
        sink = _ROUTE["sink"]
        if sink is not None:
            sink(message)
            return
        with self._lock:
            write_line(self._stream, message + "\n")  # a full log disk loses the line, not the run

    log = debug = info = warn = warning = error = critical = exception = fatal = failure = err = msg


class _LineLoggerFactory:
    def __init__(self, stream: TextIO) -> None:
        self._logger = _LineLogger(stream)

    def __call__(self, *_args: Any) -> _LineLogger:
        return self._logger


def _redact_processor(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    # Every value, however nested (lists, dicts, exceptions, the formatted traceback).
    for key, value in event_dict.items():
        if not isinstance(value, (int, float, bool)) and value is not None:
            event_dict[key] = redact_value(value)
    return event_dict


class _RedactingStderrHandler(logging.Handler):
    """The standard library's last-resort handler (warnings of asyncio, aiohttp, SQLAlchemy
    ...), redacted, one line a record.

    It writes to whatever ``sys.stderr`` is at the time, as :data:`logging.lastResort` does.
    A record's exception is said in one line (its type and message), not as a traceback:
    SQLAlchemy logs "Error closing cursor" with its traceback when Ctrl-C cancels a read
    whose aiosqlite thread is already gone (7 of 24 Parquet exports interrupted), a fault
    the user expects and the traceback does not explain. ``--log-level debug`` keeps it.
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if _CONFIGURED["level"] == "debug":
                line = self.format(record)
            else:
                line = record.getMessage()
                exc = record.exc_info[1] if record.exc_info else None
                if exc is not None:
                    line += f" ({type(exc).__name__}: {exc})" if str(exc) else f" ({type(exc).__name__})"
                line = " ".join(line.split())
            sys.stderr.write(redact(line) + "\n")
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
    logging.lastResort = _RedactingStderrHandler(logging.WARNING)
    out = stream or sys.stderr
    use_json = (not out.isatty()) if json is None else json
    # Resolved, not "auto": a child process whose stderr is a pipe to this one must render
    # as this process does (see emit_line).
    _CONFIGURED.update(level=level, json=use_json)
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    structlog.configure(
        processors=[
            _drop_quiet_events,
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redact_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=_LineLoggerFactory(out),
        cache_logger_on_first_use=False,
    )


def emit_line(line: str) -> None:
    """Write one already rendered log line (a child process's) where this process's lines go.

    While a progress bar is live that is above the bar, never onto its line.
    """
    sink = _ROUTE["sink"]
    if sink is not None:
        sink(line)
        return
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):  # stderr closed: nothing to save
        pass


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
