"""Exceptions. Every expected fault a user can cause is an ArchiverError subclass.

The CLI prints ``str(error)`` and exits non-zero; it never shows a traceback for these.
A subclass's docstring is its default message.
"""

from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (at most 500 characters), or its type name."""
    text = str(exc).strip()
    return text.splitlines()[0][:500] if text else type(exc).__name__


def described(exc: BaseException) -> str:
    """``TypeName: the first line of its message``, or the type name alone (for a log line
    about an exception nobody foresaw: the type says more than a bare message)."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class ArchiverError(Exception):
    """archiver failed."""

    exit_code = 1

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigError(ArchiverError):
    """The configuration is invalid."""

    exit_code = 2


class DatabaseUnavailable(ArchiverError):
    """The database cannot be reached."""


class DatabaseFault(ArchiverError):
    """The database refuses the work for a reason retrying cannot fix (disk full, read-only file)."""


class DatabaseVanished(ArchiverError):
    """The SQLite file was deleted or replaced while archiver was using it."""


class NotAnArchive(ArchiverError):
    """The database holds tables of another application and no archiver schema."""


class SchemaError(ArchiverError):
    """The database schema is not at the version this archiver expects."""


class InvalidResponseId(ArchiverError):
    """Not a valid response ID."""


class NotADemoDatabase(ArchiverError):
    """The database holds IDs that ``archiver demo`` did not create: the demo leaves it alone."""


class NotArchived(ArchiverError):
    """The ID is not archived."""


class IdSourceError(ArchiverError):
    """An ID file cannot be read."""


class StopRun(ArchiverError):
    """The run was stopped: the provider refused every request (bad key or billing)."""

    exit_code = 3


class EndpointDown(ArchiverError):
    """The run was stopped: the endpoint answers every ID the same wrong way (see archiver.breaker)."""

    exit_code = 4


class NormalizationError(ArchiverError):
    """The response body could not be normalized into rows."""


class WriterFailed(ArchiverError):
    """The writer process failed; rows it did not confirm stay leased and are fetched again."""
