"""The settings options: one flag and one ``ARCHIVER_*`` variable per Settings field.

Each option is declared once, as (flag, variable, field, type, help); :func:`add_options`
puts it on a parser (its help naming the variable) and :func:`settings_from` reads it from
the parsed flags, else the variable, else the Settings default.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from typing import Any

from archiver.errors import ConfigError
from archiver.ranges import OPTION_RANGES, setting_parser
from archiver.ranges import parser as ranged
from archiver.settings import (
    DEFAULT_BASE_URL,
    DEFAULT_DATABASE_URL,
    INCLUDE_VALUE,
    NORMALIZE_MODES,
    PROVIDERS,
    WRITERS,
    Settings,
    read_api_key,
)

# (flag, env variable, settings field, type, help). Defaults come from Settings.
Option = tuple[str, str, str, Callable[[str], Any], str]


def flag(value: str) -> bool:
    """An on/off setting: a bare --flag, or the variable set to 1/true/yes/on (0/false/no/off)."""
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(value)


def one_of(*allowed: str) -> Callable[[str], str]:
    """A setting with a fixed set of values (case-insensitive); the error names them."""

    def parse(value: str) -> str:
        lowered = value.strip().lower()
        if lowered not in allowed:
            raise argparse.ArgumentTypeError(f"must be one of {', '.join(allowed)}")
        return lowered

    return parse


def include_list(value: str) -> tuple[str, ...]:
    """Comma-separated ``include[]`` values; an empty value means none."""
    values = tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    for v in values:
        if not INCLUDE_VALUE.match(v):
            raise argparse.ArgumentTypeError(
                f"{v[:60]!r} is not an include value (letters, digits and _ . -, "
                "e.g. reasoning.encrypted_content)"
            )
    return values


EMPTY_IS_A_VALUE = frozenset({"include"})
"""Settings whose variable set to an empty string means something (no values), not "unset"."""

LOG_LEVELS = ("debug", "info", "warning", "error")


def _expected(type_: Callable[[str], Any]) -> str:
    """What a value of this option type must look like, for an error about a variable."""
    if type_ is int:
        return "must be a whole number"
    if type_ is float:
        return "must be a number"
    if type_ is flag:
        return "must be one of 1, true, yes, on, 0, false, no, off"
    return "is not valid"


COMMON_OPTIONS: list[Option] = [
    (
        "--config",
        "ARCHIVER_CONFIG",
        "config",
        str,
        "TOML file naming the sources ([sources.NAME] tables: base_url, api_key_env or "
        "api_key_file, provider, concurrency, max_rps, include, retention_days, "
        "webhook_secret_file); without it the flags make the one source 'default'",
    ),
    (
        "--retention-days",
        "ARCHIVER_RETENTION_DAYS",
        "retention_days",
        float,
        "how long the provider keeps stored responses (default by provider: DashScope 7, OpenAI 30)",
    ),
    (
        "--database-url",
        "ARCHIVER_DATABASE_URL",
        "database_url",
        str,
        f"database: sqlite:///path.db or postgresql://user:pass@host/db (default {DEFAULT_DATABASE_URL})",
    ),
]
ENQUEUE_OPTIONS: list[Option] = [
    (
        "--source",
        "ARCHIVER_SOURCE",
        "source",
        str,
        "source of the IDs that name none (a JSON line's source field wins); with --config it "
        "must be one the file defines (default: default)",
    ),
]
HTTP_OPTIONS: list[Option] = [
    (
        "--base-url",
        "ARCHIVER_BASE_URL",
        "base_url",
        str,
        f"Responses API base URL (default {DEFAULT_BASE_URL}); https://, or http:// to loopback",
    ),
    (
        "--allow-insecure-http",
        "ARCHIVER_ALLOW_INSECURE_HTTP",
        "allow_insecure_http",
        flag,
        "allow a plain http:// base URL to a host that is not loopback (the key crosses the "
        "network unencrypted)",
    ),
    (
        "--provider",
        "ARCHIVER_PROVIDER",
        "provider",
        one_of(*PROVIDERS),
        "which provider's error codes apply: auto (from the base URL host, the default), "
        "dashscope, openai or generic",
    ),
    (
        "--request-timeout",
        "ARCHIVER_REQUEST_TIMEOUT",
        "request_timeout",
        float,
        "seconds one request may take in all (default 60)",
    ),
    (
        "--connect-timeout",
        "ARCHIVER_CONNECT_TIMEOUT",
        "connect_timeout",
        float,
        "seconds to connect to the API host (default 10)",
    ),
]
NORMALIZE_OPTION: Option = (
    "--normalize",
    "ARCHIVER_NORMALIZE",
    "normalize",
    one_of(*NORMALIZE_MODES),
    "which normalized rows the archive keeps: full (every child table) or summary (the responses "
    "row with usage and billing rows only); recorded in the archive: by default the archive's "
    "mode (full for a new one), and a different one is refused (renormalize --all converts)",
)
RUN_OPTIONS: list[Option] = [
    NORMALIZE_OPTION,
    (
        "--writer",
        "ARCHIVER_WRITER",
        "writer",
        one_of(*WRITERS),
        "where bodies are normalized and written: process (a child process, on another core), "
        "inline (the fetching process), or auto (default: process with 2+ cores and a database "
        "file or server)",
    ),
    (
        "--with-input-items",
        "ARCHIVER_WITH_INPUT_ITEMS",
        "with_input_items",
        flag,
        "also fetch and store each response's input items (GET /responses/{id}/input_items)",
    ),
    (
        "--include",
        "ARCHIVER_INCLUDE",
        "include",
        include_list,
        "comma-separated include[] values sent with every request, for fields returned only "
        "when asked for (e.g. reasoning.encrypted_content); an empty value sends none; default "
        "by provider: openai all it documents for retrieve, dashscope and generic none",
    ),
    (
        "--metrics-port",
        "ARCHIVER_METRICS_PORT",
        "metrics_port",
        int,
        "serve Prometheus /metrics and /healthz on this port (default: off)",
    ),
    (
        "--metrics-host",
        "ARCHIVER_METRICS_HOST",
        "metrics_host",
        str,
        "address for the metrics server (default 127.0.0.1: loopback only)",
    ),
    (
        "--metrics-refresh",
        "ARCHIVER_METRICS_REFRESH",
        "metrics_refresh",
        float,
        "seconds between refreshes of the queue gauges (default 15)",
    ),
    (
        "--ingest-token-file",
        "ARCHIVER_INGEST_TOKEN_FILE",
        "ingest_token_file",
        str,
        "file holding the bearer token of POST /v1/enqueue on the metrics listener "
        "(default: no such endpoint)",
    ),
    (
        "--webhook-secret-file",
        "ARCHIVER_WEBHOOK_SECRET_FILE",
        "webhook_secret_file",
        str,
        "file holding the Standard Webhooks secret (whsec_...) of POST /webhooks/default on "
        "the metrics listener (default: no such endpoint)",
    ),
    (
        "--max-rps",
        "ARCHIVER_MAX_RPS",
        "max_rps",
        float,
        "ceiling on requests per second of the source for every process sharing the "
        "database together (the fleet), e.g. 5 or 0.5 (default: none)",
    ),
    (
        "--concurrency",
        "ARCHIVER_CONCURRENCY",
        "concurrency",
        int,
        "requests in flight at most (default 16)",
    ),
    (
        "--max-attempts",
        "ARCHIVER_MAX_ATTEMPTS",
        "max_attempts",
        int,
        "attempts per ID before it is marked failed (default 8)",
    ),
    (
        "--batch-size",
        "ARCHIVER_BATCH_SIZE",
        "batch_size",
        int,
        "rows claimed and written per transaction (default 200)",
    ),
    (
        "--max-held-mb",
        "ARCHIVER_MAX_HELD_MB",
        "max_held_mb",
        float,
        "response bodies fetched and not yet written, in MiB, at which no new request "
        "starts; a write batch closes at an eighth of it (default 32)",
    ),
    (
        "--max-body-mb",
        "ARCHIVER_MAX_BODY_MB",
        "max_body_mb",
        float,
        "largest response body (and input items of one response, all pages together) read, "
        "in MiB after decompression; a larger one fails its ID (default 16)",
    ),
    (
        "--lease-seconds",
        "ARCHIVER_LEASE_SECONDS",
        "lease_seconds",
        float,
        "lease on a claimed row, extended by a heartbeat while its fetch runs (default 60)",
    ),
    (
        "--grace-seconds",
        "ARCHIVER_GRACE_SECONDS",
        "grace_seconds",
        float,
        "on SIGTERM, how long in-flight requests may finish (default 20)",
    ),
    (
        "--final-write-seconds",
        "ARCHIVER_FINAL_WRITE_SECONDS",
        "final_write_seconds",
        float,
        "on SIGTERM, the process exits within --grace-seconds plus this: database writes not "
        "done by then (the database down or locked) are left for the leases to recover, "
        "exit 1 (default 10; enqueue, renormalize and compact: this alone)",
    ),
    (
        "--poll-interval",
        "ARCHIVER_POLL_INTERVAL",
        "poll_interval",
        float,
        "seconds between queue polls when idle (default 2)",
    ),
    (
        "--drain-horizon",
        "ARCHIVER_DRAIN_HORIZON",
        "drain_horizon",
        float,
        "--once waits for retries due within this many seconds (default 60)",
    ),
    (
        "--backoff-base",
        "ARCHIVER_BACKOFF_BASE",
        "backoff_base",
        float,
        "first retry delay in seconds (default 1)",
    ),
    (
        "--backoff-cap",
        "ARCHIVER_BACKOFF_CAP",
        "backoff_cap",
        float,
        "longest retry delay in seconds (default 300)",
    ),
    (
        "--max-server-wait",
        "ARCHIVER_MAX_SERVER_WAIT",
        "max_server_wait",
        float,
        "cap on one server-requested wait (Retry-After) in seconds (default 900)",
    ),
    (
        "--not-found-recheck",
        "ARCHIVER_NOT_FOUND_RECHECK",
        "not_found_recheck",
        float,
        "a first 404 is re-checked after this many seconds (default 30)",
    ),
    (
        "--repoll",
        "ARCHIVER_REPOLL",
        "repoll",
        float,
        "first delay before re-polling a queued/in_progress response (default 5)",
    ),
    (
        "--max-polls",
        "ARCHIVER_MAX_POLLS",
        "max_polls",
        int,
        "snapshots of a queued/in_progress response before its ID fails (default 200)",
    ),
]


def add_options(parser: argparse.ArgumentParser, options: list[Option]) -> None:
    for name, env, field_name, type_, help_ in options:
        if type_ is flag:
            parser.add_argument(
                name,
                dest=field_name,
                action="store_const",
                const=True,
                default=None,
                help=f"{help_} [env: {env}]",
            )
        else:
            parser.add_argument(
                name,
                dest=field_name,
                type=setting_parser(field_name, type_),
                default=None,
                help=f"{help_} [env: {env}]",
            )


def add_key_file(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--api-key-file",
        default=None,
        help="file holding the API key [env: ARCHIVER_API_KEY_FILE]. The key itself is read from "
        "ARCHIVER_API_KEY, else DASHSCOPE_API_KEY, else this file, else $CREDENTIALS_DIRECTORY/api_key "
        "(systemd LoadCredential); never from a flag, so it cannot show in ps",
    )


def add_log_level(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-level",
        type=one_of(*LOG_LEVELS),
        default=None,
        help="debug, info, warning, error (default info) [env: ARCHIVER_LOG_LEVEL]",
    )


IGNORED_BY = {"demo": ("ARCHIVER_DATABASE_URL", "ARCHIVER_CONFIG")}
"""Variables a command does not read: the demo never writes into the archive they name."""

OWN_VARIABLES_ONLY = frozenset({"demo"})
"""Commands that read the variables of their own options only (those ``--help`` shows): the
demo runs against its mock, so the real archive's source, base URL or request ceiling,
exported in the operator's shell, must not make it archive nothing, refuse to start or crawl."""


def log_level(args: argparse.Namespace, env: Mapping[str, str]) -> str:
    """``--log-level``, else ARCHIVER_LOG_LEVEL, else info; a bad variable exits 2 like a bad flag.

    (Logging is configured before anything else, so this cannot wait for a ConfigError.)
    """
    if args.log_level:
        return str(args.log_level)  # argparse checked it
    raw = env.get("ARCHIVER_LOG_LEVEL", "")
    try:
        return one_of(*LOG_LEVELS)(raw) if raw.strip() else "info"
    except argparse.ArgumentTypeError as exc:
        print(f"archiver: error: ARCHIVER_LOG_LEVEL={raw!r}: {exc}", file=sys.stderr)
        raise SystemExit(ConfigError.exit_code) from None


def settings_from(args: argparse.Namespace, env: Mapping[str, str]) -> Settings:
    """Settings from parsed flags, then ARCHIVER_* variables, then defaults."""
    values: dict[str, Any] = {}
    command = getattr(args, "command", None) or ""
    ignored = IGNORED_BY.get(command, ())
    own_only = command in OWN_VARIABLES_ONLY
    for _flag_name, env_name, field_name, type_, _ in (
        COMMON_OPTIONS + ENQUEUE_OPTIONS + HTTP_OPTIONS + RUN_OPTIONS
    ):
        value = getattr(args, field_name, None)
        explicit = env.get(env_name, "").strip() or (field_name in EMPTY_IS_A_VALUE and env_name in env)
        if own_only and not hasattr(args, field_name):
            continue
        if value is None and env_name not in ignored and explicit:
            try:
                value = setting_parser(field_name, type_)(env[env_name].strip())
            except argparse.ArgumentTypeError as exc:
                raise ConfigError(f"{env_name}={env[env_name]!r}: {exc}") from None
            except ValueError:
                raise ConfigError(f"{env_name}={env[env_name]!r}: {_expected(type_)}") from None
        if value is not None:
            values[field_name] = value
    values["explicit"] = frozenset(values)
    if getattr(args, "command", None) == "run":
        values["api_key"] = read_api_key(env, getattr(args, "api_key_file", None))
    return Settings(**values)


EXPORT_FORMATS = ("jsonl", "parquet", "csv")


def env_number(env: Mapping[str, str], name: str, option: str, default: int) -> int:
    """A command option's variable, in its range (exit 2 naming the variable), else ``default``."""
    value = env.get(name, "").strip()
    if not value:
        return default
    try:
        return int(ranged(OPTION_RANGES[option])(value))
    except argparse.ArgumentTypeError as exc:
        raise ConfigError(f"{name}={value!r}: {exc}") from None


def export_format_from(env: Mapping[str, str]) -> str:
    """``ARCHIVER_EXPORT_FORMAT``, checked like every other variable (exit 2 naming the choices)."""
    value = env.get("ARCHIVER_EXPORT_FORMAT", "").strip()
    if not value:
        return "jsonl"
    if value not in EXPORT_FORMATS:
        raise ConfigError(f"ARCHIVER_EXPORT_FORMAT={value!r}: must be one of {', '.join(EXPORT_FORMATS)}")
    return value


def export_cursor(flag_value: str | None, env: Mapping[str, str]) -> str:
    """``--cursor``, else ``ARCHIVER_EXPORT_CURSOR``, else ``default``; a bad name exits 2 naming it."""
    from archiver.export import cursor_name_problem

    cursor = flag_value or env.get("ARCHIVER_EXPORT_CURSOR", "").strip() or "default"
    problem = cursor_name_problem(cursor)
    if problem:  # a bad value, like any other: exit 2 naming what it must be
        raise ConfigError(f"{'--cursor' if flag_value else 'ARCHIVER_EXPORT_CURSOR'}={cursor!r}: {problem}")
    return cursor
