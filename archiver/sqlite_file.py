"""The SQLite file as the archive: made before anything connects, watched while connected.

Connecting to a missing file creates an empty one, so the file is checked (and made, for
the commands that create an archive) first. While an engine is open, every connection
records which file it opened (device and inode), and every COMMIT checks that the path
still names that file: a file deleted or replaced during a run stops the run before its
next write.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from typing import Any

from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from archiver.dburl import sqlite_path
from archiver.errors import DatabaseUnavailable, DatabaseVanished
from archiver.foreign_tables import refuse_a_foreign_sqlite_file

_FILE_IDENTITY = "archiver_file_identity"


class FileWatch:
    """What an engine's connections opened: the SQLite file, and its ``-wal``/``-shm`` files."""

    def __init__(self) -> None:
        self.identity: tuple[int, int] | None = None
        self.side_files: set[tuple[int, int]] = set()

    def note_opened(self, path: str, dbapi_connection: Any, info: dict[Any, Any]) -> None:
        """Record the file a new connection opened (stat right after the open).

        Every write batch compares it with what the path names now (:func:`check_same_file`),
        and a later connection must open the same file as the first one did.

        Raises:
            DatabaseVanished: the connection opened another file than the first one did
                (it is closed).
        """
        identity = _file_identity(path)
        if identity is not None:
            if self.identity is not None and identity != self.identity:
                dbapi_connection.close()
                raise DatabaseVanished(vanished_message(path, deleted=False))
            self.identity = identity
            info[_FILE_IDENTITY] = (path, identity)

    def note_side_files(self, path: str) -> None:
        """Record the ``-wal`` and ``-shm`` files at ``path`` (see :func:`forget_side_files`)."""
        for suffix in _SIDE_FILES:
            identity = _file_identity(path + suffix)
            if identity is not None:
                self.side_files.add(identity)


_WATCHES: weakref.WeakKeyDictionary[Engine, FileWatch] = weakref.WeakKeyDictionary()
_SIDE_FILES = ("-wal", "-shm")


def watch_file(engine: Engine, *, same_file_as: Engine | None = None) -> FileWatch:
    """The watch of the file ``engine``'s connections open.

    ``same_file_as``: an engine on the same file whose watch this one shares (the write
    engine made from an AsyncEngine, whose first connection comes later).
    """
    watch = _WATCHES.setdefault(same_file_as or engine, FileWatch())
    _WATCHES[engine] = watch
    return watch


def forget_side_files(engine: AsyncEngine) -> None:
    """After ``engine`` is disposed: if its SQLite file was deleted or replaced meanwhile, remove
    the ``-wal`` and ``-shm`` files its connections left at the path.

    They belong to the old file, and SQLite would replay that WAL into whatever file is at
    the path now (a database renamed over the archive reads as corrupt), or into a new
    archive created there.
    """
    path = sqlite_path(engine.url)
    watch = _WATCHES.get(engine.sync_engine)
    if path is None or watch is None or watch.identity is None:
        return
    current = _file_identity(path)
    if current == watch.identity:
        return
    for suffix in _SIDE_FILES:
        # With no file at the path, side files there can only be the old file's, also the
        # ones another of its connections (the writer process) opened after we looked.
        if current is None or _file_identity(path + suffix) in watch.side_files:
            with contextlib.suppress(OSError):
                os.unlink(path + suffix)


def _file_identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def vanished_message(path: str, *, deleted: bool) -> str:
    """What to tell the user when the archive file was deleted or replaced during a run."""
    how = "deleted" if deleted else "replaced by another file"
    return (
        f"the archive file {path} was {how} while archiver was using it: stopped before the "
        "next write (what this run wrote earlier went with the old file)"
    )


def check_same_file(conn: Connection) -> None:
    """Raise :class:`DatabaseVanished` when the SQLite file of ``conn`` is no longer at its path.

    Called before every COMMIT on a SQLite engine (the ``commit`` hook of
    :func:`archiver.sqlite_engine.tune_sqlite`), and by the batch writer before it returns:
    a file deleted (or renamed over) during a run still takes writes through the open
    descriptor, into an inode nobody can read any more, and the run would report them
    archived.
    """
    if conn.dialect.name != "sqlite":
        return
    recorded = conn.connection.info.get(_FILE_IDENTITY)
    if recorded is None:
        return
    path, identity = recorded
    now = _file_identity(path)
    if now != identity:
        raise DatabaseVanished(vanished_message(path, deleted=now is None))


def directory_problem(path: str) -> str | None:
    """Why a SQLite file cannot be at ``path`` whatever its contents (None: it can)."""
    directory = os.path.dirname(path)
    if os.path.isdir(path):
        return f"{path} is a directory, not a SQLite file"
    if not os.path.exists(directory):
        return f"directory for the SQLite file does not exist: {directory}"
    if not os.path.isdir(directory):
        return f"{directory} is not a directory (in the SQLite path {path})"
    return None


def prepare_sqlite_file(url: URL, *, create: bool) -> str | None:
    """Make sure the SQLite file of ``url`` exists before anything connects to it.

    Connecting to a missing file creates an empty one, so a command that only reads
    would leave an empty archive behind and report zeros.

    Args:
        url: a normalized URL (PostgreSQL and in-memory databases pass unchecked).
        create: create a missing file (``enqueue``, ``run``, ``migrate``, ``demo``).

    Returns:
        The path when this call created the file, else None.

    Raises:
        DatabaseUnavailable: the file is missing and ``create`` is false, or it cannot be
            created; one line naming the path.
        NotAnArchive: the file holds another application's tables.
    """
    path = sqlite_path(url)
    if path is None:
        return None
    problem = directory_problem(path)
    if problem:
        raise DatabaseUnavailable(problem)
    if os.path.exists(path):
        refuse_a_foreign_sqlite_file(path)
        return None
    if not create:
        raise DatabaseUnavailable(
            f"no archive at {path}: the file does not exist (check the path; "
            "`archiver migrate` or `archiver enqueue` creates a new archive)"
        )
    # What a deleted archive left beside it: SQLite would replay an old WAL into the new
    # file. (Removed first: once the file exists, another process may make its own.)
    for suffix in ("-wal", "-shm", "-journal"):
        with contextlib.suppress(OSError):
            os.unlink(path + suffix)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return None  # another process made it a moment ago
    except OSError as exc:
        raise DatabaseUnavailable(f"cannot create the archive at {path}: {exc.strerror or exc}") from None
    os.close(fd)
    return path
