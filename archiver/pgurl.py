"""PostgreSQL URLs as users write them for libpq, turned into asyncpg's connection arguments.

Operators copy URLs such as ``postgresql://archiver@db/archive?sslmode=require`` from
psql, libpq or their platform's console. SQLAlchemy's asyncpg dialect would hand every
query parameter to ``asyncpg.connect()`` as a keyword, and ``sslmode`` (the most common
one) is not one of its keywords. This module sorts the parameters:

- libpq TLS and session parameters that asyncpg reads from a DSN (``sslmode``,
  ``sslrootcert``, ``target_session_attrs`` ...) go to asyncpg as a DSN holding only them;
- ``application_name`` and ``options=-c name=value`` become server settings;
- ``connect_timeout`` becomes asyncpg's ``timeout``;
- ``host`` and ``port`` (a Unix socket directory, several hosts), ``user`` and
  ``password`` stay in the URL; ``dbname`` names the database when the path does not;
- anything else is refused with the list of what is understood.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from sqlalchemy.engine import URL

from archiver.errors import ConfigError

SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
DSN_PARAMETERS = (
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "sslpassword",
    "sslcrl",
    "sslnegotiation",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "target_session_attrs",
    "passfile",
    "service",
    "krbsrvname",
    "gsslib",
)
"""libpq parameters asyncpg reads from a DSN's query string."""
SQLALCHEMY_PARAMETERS = ("host", "port", "user", "password")
"""Parameters that stay in the URL: SQLAlchemy's dialect reads ``host`` and ``port`` (Unix
socket directories, several hosts); ``user`` and ``password`` reach asyncpg as keywords."""
OTHER_PARAMETERS = ("application_name", "options", "connect_timeout", "dbname")
DEFAULT_CONNECT_TIMEOUT_S = 15.0
DEFAULT_APPLICATION_NAME = "archiver"


def split_postgresql_url(url: URL) -> tuple[URL, dict[str, Any]]:
    """The URL SQLAlchemy gets and the ``connect_args`` for asyncpg.

    Args:
        url: a ``postgresql+asyncpg`` URL with its query parameters as written.

    Raises:
        ConfigError: a parameter archiver does not understand, or a value it cannot use.
    """
    dsn_query: dict[str, str] = {}
    server_settings = {"application_name": DEFAULT_APPLICATION_NAME}
    timeout = DEFAULT_CONNECT_TIMEOUT_S
    kept: dict[str, str | tuple[str, ...]] = {}
    kept_database: str | None = None
    for name, value in url.query.items():
        if name in SQLALCHEMY_PARAMETERS:
            kept[name] = value
            continue
        one = _single(name, value)
        if name in DSN_PARAMETERS:
            if name == "sslmode" and one not in SSL_MODES:
                raise ConfigError(f"the database URL has sslmode={one!r}: use one of {', '.join(SSL_MODES)}")
            dsn_query[name] = one
        elif name == "application_name":
            server_settings["application_name"] = one
        elif name == "options":
            server_settings.update(_options(one))
        elif name == "dbname":
            kept_database = one
        elif name == "connect_timeout":
            timeout = _timeout(one)
        else:
            known = ", ".join((*DSN_PARAMETERS, *OTHER_PARAMETERS, *SQLALCHEMY_PARAMETERS))
            raise ConfigError(
                f"the database URL has a parameter archiver does not know: {name!r} (known: {known})"
            )
    connect_args: dict[str, Any] = {"timeout": timeout, "server_settings": server_settings}
    if dsn_query:
        # Only these parameters: host, user, password and database still come from the URL.
        connect_args["dsn"] = "postgresql://?" + urllib.parse.urlencode(dsn_query)
    url = url.set(query=kept)
    if kept_database is not None and not url.database:
        url = url.set(database=kept_database)
    return url, connect_args


def _single(name: str, value: str | tuple[str, ...]) -> str:
    if isinstance(value, tuple):
        raise ConfigError(f"the database URL gives {name!r} more than once")
    return value


def _options(text: str) -> dict[str, str]:
    """libpq's ``options``: ``-c name=value`` pairs (or ``--name=value``), as server settings."""
    settings: dict[str, str] = {}
    words = text.split()
    i = 0
    while i < len(words):
        word = words[i]
        if word == "-c" and i + 1 < len(words):
            pair, i = words[i + 1], i + 2
        elif word.startswith("-c") and len(word) > 2:
            pair, i = word[2:], i + 1
        elif word.startswith("--") and "=" in word:
            name, _, value = word[2:].partition("=")
            pair, i = f"{name.replace('-', '_')}={value}", i + 1
        else:
            raise ConfigError(
                f"the database URL's options={text!r} is not a list of '-c name=value' settings"
            )
        name, eq, value = pair.partition("=")
        if not eq or not name:
            raise ConfigError(f"the database URL's options has {pair!r}: write -c name=value")
        settings[name] = value
    return settings


def _timeout(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < 86_400:
        raise ConfigError(f"the database URL has connect_timeout={text!r}: a number of seconds above 0")
    return seconds
