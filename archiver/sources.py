"""Sources: the provider accounts one archive serves, named in a TOML file (``--config``).

A source is one account: base URL, key (from an environment variable or a file, never
written in the config), provider profile, ``include`` values, retention, per-process
concurrency, a fleet-wide ``max_rps`` and an optional webhook secret. Queue rows carry
the name of their source (``archive_queue.source``, default ``default``).

How the config and the one-source flags combine (README, "Sources"):

- Without ``--config``, the flags and ``ARCHIVER_*`` variables make the one source
  ``default``, as before.
- With ``--config``, the file's sources are served. When the file has no
  ``[sources.default]``, the flags and variables make ``default`` if they describe one
  (a base URL or an API key is given: rows without a source are then fetched with it),
  else ``default`` is not served; when the file has one, a per-source flag or variable
  (``--base-url``, ``--provider``, ``--include``, ``--max-rps``, ``--retention-days``,
  ``--webhook-secret-file``, ``--api-key-file``) set as well is an error: two
  definitions of one source. ``--concurrency`` is the default of sources that set none.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archiver.errors import ConfigError
from archiver.ids import IdLine, RejectedLine
from archiver.secret_files import read_small_text
from archiver.settings import (
    DEFAULT_SOURCE,
    INCLUDE_VALUE,
    PROVIDERS,
    SOURCE_NAME,
    Settings,
    is_loopback,
    read_api_key,
    read_secret_file,
)

__all__ = [
    "DEFAULT_SOURCE",
    "SOURCE_NAME",
    "SourceConfig",
    "SourceRouting",
    "flag_form_given",
    "load_config",
    "refuse_keyless",
    "served_sources",
    "source_settings",
]

PER_SOURCE_FIELDS = (
    "base_url",
    "provider",
    "include",
    "max_rps",
    "retention_days",
    "webhook_secret_file",
    "api_key_file",
)
"""Settings fields (and ``--api-key-file``) that describe the one source of the flag form."""

_SECRET_KEYS = frozenset({"api_key", "key", "token", "secret", "webhook_secret", "password"})

CONFIG_FILE_LIMIT = 1 << 20
"""A sources file larger than this is not one (``/dev/zero``, a log named by mistake)."""


@dataclass(frozen=True)
class SourceConfig:
    """One ``[sources.NAME]`` table, checked. Never holds a key, only where to read it."""

    name: str
    base_url: str | None = None
    api_key_env: str | None = None
    api_key_file: str | None = None
    api_key_credential: str | None = None
    provider: str | None = None
    concurrency: int | None = None
    max_rps: float | None = None
    include: tuple[str, ...] | None = None
    retention_days: float | None = None
    webhook_secret_file: str | None = None

    def read_key(self, env: Mapping[str, str]) -> str | None:
        """The source's API key, from its variable, its file or its systemd credential.

        Raises:
            ConfigError: the variable is unset or empty, or the file cannot be read.
        """
        if self.api_key_credential is not None:
            return _read_credential(self.name, self.api_key_credential, env)
        if self.api_key_env is not None:
            value = env.get(self.api_key_env, "").strip()
            if not value:
                raise ConfigError(
                    f"source {self.name!r}: variable {self.api_key_env} (api_key_env) is not set"
                )
            return value
        if self.api_key_file is not None:
            return read_secret_file(self.api_key_file, f"source {self.name!r}: API key")
        return None


def _read_credential(source: str, name: str, env: Mapping[str, str]) -> str:
    """A key passed as the systemd credential ``name`` of the unit that runs this process.

    The name, unlike a path under ``/run/credentials/UNIT/``, is the same in every unit,
    so one config file serves the daemon and a backfill alike.
    """
    where = f"source {source!r}: api_key_credential {name!r}"
    directory = env.get("CREDENTIALS_DIRECTORY", "")
    if not directory:
        raise ConfigError(
            f"{where}: this process has no systemd credentials ($CREDENTIALS_DIRECTORY is not set): "
            f"add LoadCredential={name}:/etc/archiver/{name} to its unit"
        )
    path = Path(directory) / name
    if not path.exists():
        raise ConfigError(
            f"{where}: not among this unit's credentials ({directory}): "
            f"add LoadCredential={name}:/etc/archiver/{name} to its unit"
        )
    return read_secret_file(str(path), f"source {source!r}: API key")


@dataclass(frozen=True)
class _Field:
    kind: type | tuple[type, ...]
    what: str
    check: Any = field(default=None)


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be positive"


def _at_least_one(value: int) -> str | None:
    return None if value >= 1 else "must be at least 1"


def _provider(value: str) -> str | None:
    return None if value in PROVIDERS else f"must be one of {', '.join(PROVIDERS)}, not {value!r}"


def _include(value: list[Any]) -> str | None:
    for item in value:
        if not isinstance(item, str):
            return "must be a list of strings"
        if not INCLUDE_VALUE.match(item):
            return f"value {item[:60]!r} is not valid (letters, digits and _ . -)"
    return None


def _variable_name(value: str) -> str | None:
    return None if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value) else "must be an environment variable name"


def _nonempty(value: str) -> str | None:
    return None if value.strip() else "must not be empty"


def _credential_name(value: str) -> str | None:
    # No ':': LoadCredential=ID:PATH splits at the first one, so systemd never loads such a name.
    if value in (".", "..") or not re.fullmatch(r"[A-Za-z0-9_.-]{1,255}", value):
        return "must be a systemd credential name (letters, digits and _ . -; no / or :)"
    return None


_FIELDS: dict[str, _Field] = {
    "base_url": _Field(str, "a string", _nonempty),
    "api_key_env": _Field(str, "a string", _variable_name),
    "api_key_file": _Field(str, "a string", _nonempty),
    "api_key_credential": _Field(str, "a string", _credential_name),
    "provider": _Field(str, "a string", _provider),
    "concurrency": _Field(int, "a whole number", _at_least_one),
    "max_rps": _Field((int, float), "a number", _positive),
    "include": _Field(list, "a list of strings", _include),
    "retention_days": _Field((int, float), "a number", _positive),
    "webhook_secret_file": _Field(str, "a string", _nonempty),
}


def load_config(path: str) -> dict[str, SourceConfig]:
    """Read and check a config file.

    Raises:
        ConfigError: one line naming the file (and the line of a TOML syntax error, the
            source and key of a bad value). A key written in the file is refused.
    """
    try:
        # A byte order mark (Windows editors) is no TOML statement: "line 1, column 1" would
        # point at a character nobody sees.
        data = tomllib.loads(read_small_text(Path(path), "config", CONFIG_FILE_LIMIT).removeprefix("\ufeff"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"config file is a directory: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file is not UTF-8 text: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: TOML syntax error: {exc}") from None
    except RecursionError:  # tomllib recurses per nested array or inline table
        raise ConfigError(
            f"config file {path}: arrays or inline tables nested too deep to read "
            "(a sources file nests 2 levels)"
        ) from None
    unknown = sorted(set(data) - {"sources"})
    if unknown:
        raise ConfigError(f"config file {path}: unknown key {unknown[0]!r} (only [sources.NAME] tables)")
    tables = data.get("sources", {})
    if not isinstance(tables, dict):
        raise ConfigError(f"config file {path}: 'sources' must be a table of [sources.NAME] tables")
    if not tables:
        raise ConfigError(f"config file {path}: no [sources.NAME] table")
    sources: dict[str, SourceConfig] = {}
    for name, table in tables.items():
        where = f"config file {path}: [sources.{name}]"
        if not SOURCE_NAME.match(name):
            raise ConfigError(f"{where}: the name must be letters, digits and _ . - (up to 64 characters)")
        if not isinstance(table, dict):
            raise ConfigError(f"config file {path}: sources.{name} must be a table")
        sources[name] = _source_from(name, table, where)
    return sources


def _source_from(name: str, table: dict[str, Any], where: str) -> SourceConfig:
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key in _SECRET_KEYS:
            raise ConfigError(
                f"{where}: {key} is refused: never write a key in the config file; "
                "use api_key_env (a variable), api_key_file (a file) or api_key_credential "
                "(a systemd credential)"
            )
        spec = _FIELDS.get(key)
        if spec is None:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(_FIELDS)})")
        if isinstance(value, bool) or not isinstance(value, spec.kind):
            raise ConfigError(f"{where}: {key} must be {spec.what}, not {_toml_type(value)}")
        problem = spec.check(value) if spec.check is not None else None
        if problem is not None:
            raise ConfigError(f"{where}: {key} {problem}")
        values[key] = tuple(dict.fromkeys(value)) if isinstance(value, list) else value
    given = [key for key in ("api_key_env", "api_key_file", "api_key_credential") if key in values]
    if len(given) > 1:
        raise ConfigError(
            f"{where}: give one of api_key_env, api_key_file and api_key_credential, "
            f"not both {given[0]} and {given[1]}"
        )
    if "base_url" not in values and name != DEFAULT_SOURCE:
        raise ConfigError(f"{where}: base_url is required")
    if "max_rps" in values:
        values["max_rps"] = float(values["max_rps"])
    if "retention_days" in values:
        values["retention_days"] = float(values["retention_days"])
    return SourceConfig(name=name, **values)


def _toml_type(value: Any) -> str:
    names = {bool: "a boolean", int: "a whole number", float: "a number", str: "a string", list: "a list"}
    for kind, shown in names.items():
        if isinstance(value, kind):
            return shown
    return "a table" if isinstance(value, dict) else type(value).__name__


def source_settings(
    settings: Settings,
    config: Mapping[str, SourceConfig] | None,
    env: Mapping[str, str] = os.environ,
    *,
    api_key_file: str | None = None,
    with_keys: bool = True,
) -> dict[str, Settings]:
    """The settings of every source served, by name (``default`` first when present).

    Args:
        settings: the settings of the flag form (they make ``default`` unless the config
            defines it) and the process-wide settings every source shares.
        config: the loaded config file, or None (the one-source form).
        env: where ``api_key_env`` variables are read.
        api_key_file: ``--api-key-file`` (a per-source flag; see the module docstring).
        with_keys: read each source's key (``run``); other commands need none.

    Raises:
        ConfigError: a per-source flag conflicts with ``[sources.default]``, a key cannot
            be read, or a source's values are invalid (its name is in the message).
    """
    if not config:
        return {DEFAULT_SOURCE: settings.with_changes(source=DEFAULT_SOURCE)}
    served: dict[str, Settings] = {}
    if DEFAULT_SOURCE in config:
        explicit = sorted(f for f in PER_SOURCE_FIELDS if f in settings.explicit)
        if api_key_file is not None:
            explicit.append("api_key_file")
        if explicit:
            shown = ", ".join("--" + f.replace("_", "-") for f in explicit)
            raise ConfigError(
                f"{shown} and [sources.default] in the config file both define the source 'default': "
                "use one of them"
            )
    elif flag_form_given(settings, env, api_key_file):
        served[DEFAULT_SOURCE] = settings.with_changes(source=DEFAULT_SOURCE)
    for name, source in config.items():
        served[name] = _settings_of(settings, source, env, with_keys=with_keys)
    return served


def flag_form_given(settings: Settings, env: Mapping[str, str], api_key_file: str | None = None) -> bool:
    """Whether the flags and variables describe a ``default`` source: a base URL or a key."""
    if "base_url" in settings.explicit or settings.api_key is not None:
        return True
    try:
        return read_api_key(env, api_key_file) is not None
    except ConfigError:
        return True  # a key file was named: `run` says what is wrong with it


def refuse_keyless(sources: Mapping[str, Settings], *, from_config: bool) -> None:
    """Refuse to run a source with no API key unless its base URL is loopback (a mock).

    Args:
        sources: What :func:`source_settings` returned.
        from_config: Whether the sources came from a ``--config`` file (the message says where
            to put the key).

    Raises:
        ConfigError: naming the first source without a key.
    """
    for name, source in sources.items():
        if source.api_key is None and not is_loopback(source.base_url):
            if not from_config:
                raise ConfigError(
                    "no API key: set ARCHIVER_API_KEY or DASHSCOPE_API_KEY (or --api-key-file); "
                    "to try archiver without a key, run `archiver demo`"
                )
            raise ConfigError(
                f"source {name!r}: no API key: set api_key_env, api_key_file or api_key_credential "
                "in the config file"
                + (" (or ARCHIVER_API_KEY / DASHSCOPE_API_KEY / --api-key-file)" if name == "default" else "")
            )


def served_sources(
    settings: Settings, config: Mapping[str, SourceConfig] | None, env: Mapping[str, str] = os.environ
) -> list[str]:
    """The names ``run`` serves with these settings and config (no key is read for the others)."""
    if not config:
        return [DEFAULT_SOURCE]
    default = [DEFAULT_SOURCE] if DEFAULT_SOURCE in config or flag_form_given(settings, env) else []
    return [*default, *(name for name in config if name != DEFAULT_SOURCE)]


def _settings_of(
    settings: Settings, source: SourceConfig, env: Mapping[str, str], *, with_keys: bool
) -> Settings:
    changes: dict[str, Any] = {"source": source.name}
    for name in ("base_url", "provider", "concurrency", "max_rps", "include", "retention_days"):
        value = getattr(source, name)
        if value is not None:
            changes[name] = value
    if source.name != DEFAULT_SOURCE:
        # Settings of the flag form that belong to `default` only: other sources get
        # their own or the defaults, never default's webhook secret or ceiling.
        for name in ("provider", "max_rps", "include", "retention_days"):
            changes.setdefault(name, Settings.__dataclass_fields__[name].default)
    changes["webhook_secret_file"] = source.webhook_secret_file
    if with_keys:
        if source.api_key_env is None and source.api_key_file is None and source.api_key_credential is None:
            changes["api_key"] = read_api_key(env) if source.name == DEFAULT_SOURCE else None
        else:
            changes["api_key"] = source.read_key(env)
    else:
        changes["api_key"] = None
    try:
        return settings.with_changes(**changes)
    except ConfigError as exc:
        raise ConfigError(f"source {source.name!r}: {exc}") from None


@dataclass(frozen=True)
class SourceRouting:
    """Which source an enqueued ID goes to, and which sources are accepted.

    Args:
        default: the source of IDs that name none (``--source``).
        known: the configured sources (a config file was given); None: any valid name
            is accepted, and the daemon's config decides (rows of a source it does not
            serve stay ``pending`` and are reported by ``status`` and ``check``).
    """

    default: str = DEFAULT_SOURCE
    known: frozenset[str] | None = None

    def source_of(self, line: IdLine) -> str | RejectedLine:
        """The line's source, or the rejection of a line naming an unknown one."""
        source = line.source or self.default
        if self.known is not None and source not in self.known:
            return RejectedLine(
                line.line_no, f"unknown source {source!r} (not in the config file)", line.response_id
            )
        return source

    @classmethod
    def from_settings(cls, settings: Settings, config: Mapping[str, SourceConfig] | None) -> SourceRouting:
        """The routing of ``enqueue``: ``--source``, checked against the config when given.

        Raises:
            ConfigError: ``--source`` names a source the config file does not define.
        """
        known = frozenset({DEFAULT_SOURCE, *config}) if config else None
        if known is not None and settings.source not in known:
            raise ConfigError(
                f"unknown source {settings.source!r}: the config file defines {', '.join(sorted(known))}"
            )
        return cls(settings.source, known)
