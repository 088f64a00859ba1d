"""Database errors as users read them: what retrying cannot fix, and one line for each.

A full disk, a read-only file or database, a schema another version migrated: the user
must act, so these stop the work at once instead of being retried
(:mod:`archiver.db_retry`). Never ``str()`` of a SQLAlchemy error in a message: that
carries the statement and its parameters.
"""

from __future__ import annotations

import os

from sqlalchemy.exc import DBAPIError

from archiver.errors import DatabaseFault, DatabaseUnavailable, first_line
from archiver.redaction import redact

# Driver messages (lower case) of conditions retrying cannot fix, and what to tell the user.
_FULL = "the disk holding the database is full; free some space, then run again"
_READ_ONLY = "the database is read-only; make it writable, then run again"
_DISK_FAILS = "the disk holding the database fails"
_NEARLY_FULL_BYTES = 1 << 20
"""Free space below which a SQLite I/O error is taken for a full disk."""
_SCHEMA_CHANGED = (
    "the database schema is not the one this version of archiver uses (another version "
    "migrated it, or it was changed by hand); run the version that migrated it"
)
_PERMANENT_SQLITE = (
    ("database or disk is full", _FULL),
    ("attempt to write a readonly database", _READ_ONLY),
    ("unable to open database file", "the database file cannot be opened"),
    ("disk i/o error", _DISK_FAILS),
    ("file is not a database", "the file is not a SQLite database"),
    ("database disk image is malformed", "the database file is corrupt"),
    # SQLite says so for a statement prepared against another schema: no retry changes it.
    ("no such column", _SCHEMA_CHANGED),
    ("has no column named", _SCHEMA_CHANGED),
    ("no such table", _SCHEMA_CHANGED),
)
_PERMANENT_SQLSTATE = {
    "53100": _FULL,
    "25006": _READ_ONLY,
    "42501": "the database user lacks a privilege",
    "42703": _SCHEMA_CHANGED,  # undefined_column
    "42P01": _SCHEMA_CHANGED,  # undefined_table
}


def sqlstate(exc: DBAPIError) -> str | None:
    """The PostgreSQL condition code (SQLSTATE) of ``exc``, if the driver gave one."""
    orig = exc.orig
    code = getattr(orig, "sqlstate", None) or getattr(getattr(orig, "__cause__", None), "sqlstate", None)
    return str(code) if code else None


def permanent_db_fault(exc: BaseException) -> str | None:
    """What is wrong, when ``exc`` is a database condition that retrying cannot fix, else None.

    A full disk, a read-only file or database, a file that cannot be opened: the user must
    act, so these stop the work at once with one line instead of being retried.
    """
    if not isinstance(exc, DBAPIError):
        return None
    code = sqlstate(exc)
    if code in _PERMANENT_SQLSTATE:
        return _PERMANENT_SQLSTATE[code]
    message = str(exc.orig).lower()
    for needle, meaning in _PERMANENT_SQLITE:
        if needle in message:
            return meaning
    return None


def db_error_message(exc: BaseException) -> str:
    """The driver's message of a database error, one line, redacted.

    Never ``str()`` of a SQLAlchemy error: that carries the statement and its parameters
    (a whole batch of IDs or bodies).
    """
    if isinstance(exc, DBAPIError):
        return short_db_error(exc)
    return redact(first_line(exc))


def database_error(exc: BaseException, where: str) -> DatabaseFault | DatabaseUnavailable:
    """The one-line ArchiverError for a database error (``where`` names the database)."""
    fault = permanent_db_fault(exc)
    if fault == _DISK_FAILS and os.path.isabs(where) and _nearly_full(os.path.dirname(where)):
        # SQLite says "disk I/O error", not "full", when a full disk refuses it the -shm
        # or -wal file (a disk that was full before the first write).
        fault = _FULL
    if fault == _FULL and os.path.isabs(where) and not _nearly_full(os.path.dirname(where)):
        temp = sqlite_temp_directory()
        if temp is not None and _nearly_full(temp):
            # The archive's disk has room: SQLite's temporary files (a temporary table,
            # a sort too large for memory) filled theirs, which SQLite does not name.
            return DatabaseFault(
                f"the disk holding SQLite's temporary files is full: {temp} ({short_db_error(exc)}); "
                "free some space there or set SQLITE_TMPDIR to a directory with room, then run again"
            )
    if fault is not None:
        meaning, _, hint = fault.partition("; ")
        return DatabaseFault(f"{meaning}: {where} ({short_db_error(exc)})" + (f"; {hint}" if hint else ""))
    return DatabaseUnavailable(f"cannot use the database {where}: {short_db_error(exc)}")


_SQLITE_TEMP_FALLBACKS = ("/var/tmp", "/usr/tmp", "/tmp", ".")  # noqa: S108 (named, not written)


def sqlite_temp_directory() -> str | None:
    """Where SQLite writes its temporary files, chosen as its unix VFS does: the first of
    ``SQLITE_TMPDIR``, ``TMPDIR``, ``/var/tmp``, ``/usr/tmp``, ``/tmp``, ``.`` that is a
    directory this process may write."""
    for directory in (os.environ.get("SQLITE_TMPDIR"), os.environ.get("TMPDIR"), *_SQLITE_TEMP_FALLBACKS):
        if directory and os.path.isdir(directory) and os.access(directory, os.W_OK | os.X_OK):
            return directory
    return None


def _nearly_full(directory: str) -> bool:
    try:
        st = os.statvfs(directory)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < _NEARLY_FULL_BYTES


def short_db_error(exc: BaseException) -> str:
    """The first line of the driver's message (at most 300 characters), redacted."""
    orig = getattr(exc, "orig", None) or exc
    message = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    return redact(message[:300])
