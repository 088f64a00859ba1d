"""Real file-system faults for tests: a small tmpfs that fills up, read-only bind mounts.

Tests run as root in CI, where ``chmod 0444`` means nothing (root writes anyway): a
read-only mount is the honest way to make a file or a directory read-only. Each helper
unmounts in its ``finally``; when mounting is not permitted it raises
:class:`MountRefused`, and the caller falls back or skips saying why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class MountRefused(Exception):
    """This process may not mount (not root, or no CAP_SYS_ADMIN in its namespace)."""


def _mount(*args: str) -> None:
    if shutil.which("mount") is None:
        raise MountRefused("no mount command")
    done = subprocess.run(["mount", *args], capture_output=True, timeout=20, check=False)
    if done.returncode != 0:
        raise MountRefused(f"mount {' '.join(args)}: {done.stderr.decode(errors='replace').strip()}")


def _unmount(path: Path) -> None:
    done = subprocess.run(["umount", str(path)], capture_output=True, timeout=20, check=False)
    if done.returncode != 0:  # still busy (a process that outlived its test): detach it
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=20, check=False)


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (``"4m"``) mounted on ``path`` (made if missing)."""
    path.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    try:
        yield path
    finally:
        _unmount(path)


@contextmanager
def read_only(path: Path) -> Iterator[Path]:
    """``path`` (a file or a directory) made read-only by a read-only bind mount on itself."""
    _mount("--bind", str(path), str(path))
    try:
        _mount("-o", "remount,ro,bind", str(path))
    except MountRefused:
        _unmount(path)
        raise
    try:
        yield path
    finally:
        _unmount(path)


def fill(directory: Path, leave_bytes: int) -> Path:
    """Fill the file system of ``directory`` until about ``leave_bytes`` are free; returns the filler."""
    filler = directory / "filler"
    free = os.statvfs(directory).f_bavail * os.statvfs(directory).f_frsize
    with filler.open("wb") as out:
        out.truncate(0)
        chunk = b"\0" * 65536
        left = max(free - leave_bytes, 0)
        while left > 0:
            out.write(chunk[: min(left, len(chunk))])
            left -= len(chunk)
    return filler
