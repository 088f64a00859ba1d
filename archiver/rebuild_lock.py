"""One rebuild at a time per archive: ``compact`` and ``renormalize`` refuse to run beside each other.

Both walk the archive's responses and rewrite them; two at once do each other's work
again, each counting the other's rewrites as "re-archived meanwhile", and two
``renormalize --all`` fight over one saved position. So the second refuses at once, with
one line naming the first (its command, pid, host and start), exit 1. A running daemon is
not affected: rebuilds are made to run beside writers.

The lock dies with its holder, so a ``kill -9``, an OOM kill or a reboot never leaves an
archive locked:

- **PostgreSQL**: a session advisory lock (``pg_try_advisory_lock``, keyed by the
  archive's schema) on a connection the command holds while it runs; the server drops it
  when that connection ends. Who holds it is recorded in ``archive_meta`` (row
  ``rebuild_running``) for the message, and removed at the end.
- **SQLite**: ``flock`` on a file beside the archive, ``PATH-rebuild-lock``, which holds
  the holder's description. The kernel drops the lock when the process ends; the file
  stays (deleting a lock file lets a third process lock a file nobody else looks at).
  ``PATH`` is the archive's real path (symlinks resolved); two hard links to one archive
  are two paths and would take two locks.
  A directory where that file cannot be made (read-only, full) takes no lock: the
  command then meets the same condition on the database and says so in its own line.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from archiver.dburl import sqlite_path
from archiver.errors import ArchiverError
from archiver.projection import read_meta_sync, write_meta_sync

LOCK_CLASS = 0x72656275  # "rebu": the first key of the two-key advisory lock (the schema is the second)
META_KEY = "rebuild_running"
LOCK_SUFFIX = "-rebuild-lock"


class RebuildRunning(ArchiverError):
    """Another compact or renormalize is running on this archive."""


def _holder(command: str) -> dict[str, Any]:
    return {
        "command": command,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    }


def _refusal(holder: dict[str, Any] | None) -> RebuildRunning:
    if not holder:
        who, what = "", "compact or renormalize"
    else:
        what = str(holder.get("command") or "compact or renormalize")
        who = f" (pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')})"
    return RebuildRunning(
        f"another {what} is running on this archive{who}: let it finish, or stop it (a stopped "
        "one resumes where it was when run again), then run this command"
    )


def _loads(value: str | None) -> dict[str, Any] | None:
    try:
        holder = json.loads(value) if value else None
    except ValueError:
        return None
    return holder if isinstance(holder, dict) else None


@contextlib.asynccontextmanager
async def exclusive_rebuild(engine: AsyncEngine, command: str) -> AsyncIterator[None]:
    """Hold the archive's rebuild lock while the body runs (see the module docstring).

    Args:
        engine: the open archive.
        command: what runs (``compact``, ``renormalize``), named to a second one.

    Raises:
        RebuildRunning: another rebuild holds the lock.
    """
    if engine.dialect.name == "postgresql":
        async with _advisory_lock(engine, command):
            yield
        return
    path = sqlite_path(engine.url)
    if path is None:  # in memory: nobody else can open it
        yield
        return
    with _file_lock(path, command):
        yield


@contextlib.contextmanager
def _file_lock(database: str, command: str) -> Iterator[None]:
    # The file's own path: an archive reached through a symlink (or a symlinked
    # directory) has one lock, not one beside each link.
    path = os.path.realpath(database) + LOCK_SUFFIX
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError:  # read-only or full: the command meets that itself, in its own words
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _refusal(_loads(os.pread(fd, 4096, 0).decode("utf-8", "replace"))) from None
        with contextlib.suppress(OSError):  # the description is for the message only
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(_holder(command)).encode(), 0)
        yield
    finally:
        os.close(fd)  # drops the lock


@contextlib.asynccontextmanager
async def _advisory_lock(engine: AsyncEngine, command: str) -> AsyncIterator[None]:
    key = {"k": LOCK_CLASS}
    async with engine.connect() as conn:
        got = (
            await conn.execute(text("SELECT pg_try_advisory_lock(:k, hashtext(current_schema()))"), key)
        ).scalar()
        await conn.commit()  # the session lock stays; the connection must not idle in a transaction
        if not got:
            raise _refusal(_loads(await conn.run_sync(read_meta_sync, META_KEY)))
        try:
            async with engine.begin() as other:
                await other.run_sync(write_meta_sync, META_KEY, json.dumps(_holder(command)))
            yield
        finally:
            try:
                async with engine.begin() as other:
                    await other.run_sync(write_meta_sync, META_KEY, None)
                await conn.execute(text("SELECT pg_advisory_unlock(:k, hashtext(current_schema()))"), key)
                await conn.commit()
            except Exception:  # a lost connection holds no lock; never return a locked one to the pool
                await conn.invalidate()
