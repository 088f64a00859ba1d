"""Small files given by path: keys, tokens, webhook secrets and the config, possibly not regular files.

An operator may name a pipe (``--api-key-file <(pass show archiver)``), a FIFO, a
systemd credential or ``/dev/stdin``. Two rules make those work like a regular file:

- **Read once per process.** A pipe can be read only once, and a command asks for its
  key file several times (the redaction point, the settings, the source rules): the
  text read first is kept, keyed by the file's identity (device and inode; for a regular
  file also its size and modification time, so a changed file is read again).
- **Wait, but not for ever.** A FIFO or pipe that no program writes to would block
  start-up for good (a unit stuck in "activating", a shell that just hangs): the text
  must arrive within :data:`SECRET_WAIT_S`, or the command ends with one line naming the
  file (once per process: asked again, the same file fails at once). A stop signal
  meanwhile ends it too (the wait is a ``poll``).
"""

from __future__ import annotations

import os
import select
import stat
import time
from pathlib import Path

from archiver.errors import ConfigError

SECRET_WAIT_S = 30.0
"""How long a FIFO, pipe or terminal named as a file may take to deliver its text (end of file)."""

_READ: dict[tuple[int, ...], bytes] = {}
_TIMED_OUT: dict[tuple[int, ...], str] = {}
"""Files whose wait ran out: asked again (a command asks several times), they fail at once
instead of adding another wait (``archiver run`` took 60 s, not 30)."""


def _identity(info: os.stat_result) -> tuple[int, ...]:
    if stat.S_ISREG(info.st_mode):
        return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
    return (info.st_dev, info.st_ino)


def _size_text(limit: int) -> str:
    return f"{limit >> 20} MiB" if limit % (1 << 20) == 0 else f"{limit >> 10} KiB"


def read_small_text(path: Path, what: str, limit: int, wait_s: float | None = None) -> str:
    """The UTF-8 text of a small file, read without trusting its size or its kind.

    Args:
        path: the file (a regular file, a FIFO, a pipe such as ``/dev/fd/63``, a device).
        what: what it holds, for the messages ("API key", "config").
        limit: most bytes read; a larger file is refused.
        wait_s: how long a file that is not a regular file may take (default
            :data:`SECRET_WAIT_S`).

    Raises:
        ConfigError: more than ``limit`` bytes (``/dev/zero``, a log named by mistake);
            nothing delivered within ``wait_s``.
        OSError, UnicodeDecodeError: as ``open`` and ``decode`` raise them.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)  # a FIFO's open must not block
    try:
        info = os.fstat(fd)
        key = _identity(info)
        data = _READ.get(key)
        if data is None:
            if stat.S_ISREG(info.st_mode):
                os.set_blocking(fd, True)
                data = _read_regular(fd, limit + 1)
            elif key in _TIMED_OUT:
                raise ConfigError(_TIMED_OUT[key])
            else:
                try:
                    data = _read_waiting(
                        fd, limit + 1, SECRET_WAIT_S if wait_s is None else wait_s, path, what
                    )
                except ConfigError as exc:
                    _TIMED_OUT[key] = str(exc)
                    raise
            if len(data) <= limit:
                _READ[key] = data
    finally:
        os.close(fd)
    if len(data) > limit:
        raise ConfigError(f"{what} file is larger than {_size_text(limit)}: {path}")
    return data.decode("utf-8")


def _read_regular(fd: int, most: int) -> bytes:
    pieces: list[bytes] = []
    got = 0
    while got < most:
        piece = os.read(fd, most - got)
        if not piece:
            break
        pieces.append(piece)
        got += len(piece)
    return b"".join(pieces)


def _read_waiting(fd: int, most: int, wait_s: float, path: Path, what: str) -> bytes:
    """Read a FIFO, pipe or device to its end (or ``most`` bytes) within ``wait_s`` seconds.

    ``poll`` first, then read: a FIFO no writer has opened yet reads as its end at once,
    but polls as not ready until a writer comes (Linux reports no hang-up before that).
    """
    deadline = time.monotonic() + wait_s
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    pieces: list[bytes] = []
    got = 0
    while got < most:
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(left * 1000):
            raise ConfigError(
                f"{what} file {path}: nothing came within {wait_s:g} s (a FIFO or pipe that no "
                "program writes to?); write it, or name a regular file"
            )
        try:
            piece = os.read(fd, most - got)
        except BlockingIOError:
            continue
        if not piece:
            break
        pieces.append(piece)
        got += len(piece)
    return b"".join(pieces)
