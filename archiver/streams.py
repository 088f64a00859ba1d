"""The process's standard streams: closed ones replaced, output written in full or not at all.

A command's output is its result (``show`` prints the archived body): a stream that was
closed, or a reader that went away, must end the command with an error status, never a
traceback and never a silent success.
"""

from __future__ import annotations

import contextlib
import os
import sys


def open_closed_std_streams() -> bool:
    """Give a command started with stdout or stderr closed (``>&-``, ``2>&-``) /dev/null there.

    Python leaves ``sys.stdout``/``sys.stderr`` as None then, and the first print or log
    line would end the command in an AttributeError: ``enqueue 2>&-`` must still queue.
    The descriptor opened takes the closed number, so child processes get it too.
    Returns whether stdout was closed.
    """
    stdout_closed = sys.stdout is None
    for name in ("stdin", "stdout", "stderr"):
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, "r" if name == "stdin" else "w"))  # noqa: SIM115
    return stdout_closed


def flush_output(code: int, *, stdout_closed: bool) -> int:
    """Flush stdout and stderr at the end of a command; the exit status, made 1 if output was lost.

    Args:
        code: The command's exit status.
        stdout_closed: What :func:`open_closed_std_streams` returned.
    """
    try:
        sys.stdout.flush()
    except OSError:  # the reader went away (`show ID | head -c1`): what was asked is not all out
        code = code or 1
    if stdout_closed and code == 0:
        # As GNU tools do: the work is done, but its output went nowhere.
        print("archiver: error: stdout is closed: the command's output was lost", file=sys.stderr)
        code = 1
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    return code


def discard_stdout() -> None:
    """Point stdout at /dev/null, so the flush at exit cannot fail on the closed pipe again."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def write_all(data: bytes) -> None:
    """Write ``data`` to stdout in full, or raise (BrokenPipeError when the reader left).

    The buffered writer can report a short write to a pipe whose reader went away, and
    ``show ID | head -c1`` then looked like a success; ``os.write`` in a loop cannot.
    """
    sys.stdout.flush()
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError):  # not a real file (a test's StringIO)
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view[: 1 << 20]) :]
