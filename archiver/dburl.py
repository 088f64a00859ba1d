"""Database URLs: the form users write turned into one with an asyncio driver, and the
form messages show (without password).

``sqlite:///file.db`` becomes ``sqlite+aiosqlite``; ``postgresql://`` and ``postgres://``
become ``postgresql+asyncpg`` (:mod:`archiver.pgurl` checks the parameters asyncpg takes).
"""

from __future__ import annotations

import os
import re
import urllib.parse

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from archiver.errors import ConfigError
from archiver.pgurl import split_postgresql_url
from archiver.redaction import redact


def normalize_database_url(url: str) -> URL:
    """Turn a URL as users write it into one with an asyncio driver.

    ``sqlite:///file.db`` -> ``sqlite+aiosqlite``; ``postgresql://`` and ``postgres://``
    -> ``postgresql+asyncpg``. A bare ``postgresql://`` with no host also honours the
    libpq ``PG*`` variables (through asyncpg).

    A SQLite URL must name its file: ``sqlite:///`` (what ``sqlite:///$DB`` gives when the
    variable is unset) and ``sqlite://`` would be a throwaway in-memory database, so an
    in-memory database is had only by asking for ``sqlite:///:memory:``.

    Raises:
        ConfigError: not a URL archiver can use; the message suggests the right form.
    """
    raw = url.strip()
    if not raw:
        raise ConfigError(f"no database URL: use {_SQLITE_EXAMPLE} or postgresql://user@host/db")
    if "://" not in raw:
        if re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", raw):
            raise ConfigError(
                f"not a database URL: {redact_url(raw)}: use {_SQLITE_EXAMPLE} or postgresql://user@host/db"
            )
        raise ConfigError(
            f"not a database URL: {redact(raw)}: for a SQLite file write sqlite:///{redact(raw)}"
        )
    if raw.startswith("postgres://"):
        raw = "postgresql://" + raw[len("postgres://") :]
    try:
        parsed = make_url(raw)
    except ArgumentError:
        raise ConfigError(f"not a database URL: {redact_url(raw)}") from None
    except ValueError:  # sqlalchemy parses the port with int(): "abc", or "[::1" cut at a colon
        raise ConfigError(
            f"not a database URL: {redact_url(raw)}: the host and port cannot be read "
            "(the port must be a number; an IPv6 address goes in brackets: [::1]:5432)"
        ) from None
    backend = parsed.get_backend_name()
    if "\x00" in (parsed.database or "") or "\x00" in (parsed.host or ""):
        raise ConfigError(f"not a database URL: {redact_url(raw)}: it holds a NUL character (%00)")
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise ConfigError(f"not a database URL: {redact_url(raw)}: port {parsed.port} is not 1-65535")
    if backend == "sqlite":
        if parsed.host or parsed.port or parsed.username:
            path = raw.partition("://")[2].partition("?")[0]
            raise ConfigError(
                f"not a SQLite URL: {redact_url(raw)}: a SQLite URL has three slashes before a "
                f"relative path (sqlite:///{path}) and four before an absolute one"
            )
        if not parsed.database:
            raise ConfigError(
                f"the database URL {redact_url(raw)} names no file (an unset variable in "
                f"sqlite:///$DB?): use {_SQLITE_EXAMPLE}, or sqlite:///:memory: for a throwaway "
                "in-memory database"
            )
        if parsed.query or "?" in raw or parsed.database.startswith("file:"):
            # SQLAlchemy passes some parameters to the driver and ignores others (with a
            # warning), and a SQLite URI filename can name a throwaway in-memory database
            # or open the file another way than the one archiver's safety checks watch.
            path = parsed.database.removeprefix("file:").partition("?")[0] or "archive.db"
            raise ConfigError(
                f"the SQLite URL {redact_url(raw)} has options archiver does not take (a query "
                f"string or a file: URI): write the path alone, sqlite:///{redact(path)} (or "
                "sqlite:///:memory: for a throwaway in-memory database)"
            )
        return parsed.set(drivername="sqlite+aiosqlite")
    if backend == "postgresql":
        postgresql = parsed.set(drivername="postgresql+asyncpg")
        split_postgresql_url(postgresql)  # refuse parameters asyncpg would choke on, now
        return postgresql
    raise ConfigError(f"unsupported database {backend!r}: use sqlite:/// or postgresql://")


_SQLITE_EXAMPLE = "sqlite:///archive.db"


_CREDENTIAL_PARAMETER = re.compile(r"(?i)pass|secret|token|key")
"""Query parameters whose value may be a credential (``password``, ``sslkey``, ...)."""


def redact_url(url: str | URL) -> str:
    """The URL as written, without its password (for logs, errors and ``status``).

    A password in the user info becomes ``***`` (one with an unescaped ``@`` too: the user
    info ends at the last ``@`` before the query), query parameters whose name contains
    pass/secret/token/key are dropped, and registered secrets are masked
    (:func:`archiver.redaction.redact`).
    """
    # A URL that does not parse is masked the same way below (and register_database_url
    # registered every value its password could be read as).
    text = url.render_as_string(hide_password=False) if isinstance(url, URL) else url.strip()
    scheme, sep, rest = text.partition("://")
    location, question, query = rest.partition("?")
    if sep and "@" in location and not location.startswith("/"):
        userinfo, _, host_and_path = location.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        location = f"{user}:***@{host_and_path}" if colon else f"{userinfo}@{host_and_path}"
    kept = [
        pair
        for pair in query.split("&")
        if pair and not _CREDENTIAL_PARAMETER.search(urllib.parse.unquote_plus(pair.partition("=")[0]))
    ]
    return redact(f"{scheme}{sep}{location}" + (question + "&".join(kept) if kept else ""))


def sqlite_path(url: URL) -> str | None:
    """The absolute path of a SQLite file URL; None for PostgreSQL and in-memory databases."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    if url.database.startswith("file:"):  # a URI filename: SQLite parses it, not us
        return None
    return os.path.abspath(url.database)


def describe_database(url: URL) -> str:
    """How messages name a database: the SQLite file's path, or the URL without password."""
    path = sqlite_path(url)
    if path is not None:
        return path
    if url.get_backend_name() == "postgresql":
        url = url.set(drivername="postgresql")
    elif url.get_backend_name() == "sqlite":
        url = url.set(drivername="sqlite")
    return redact_url(url)
