"""The process's standard streams: closed ones replaced, output written in full or not at all.

A command's output is its result (``show`` prints the archived body): a stream that was
closed, or a reader that went away, must end the command with an error status, never a
traceback and never a silent success.

On a device that refuses writes (``>/dev/full``, a full disk):

- **stdout**: when the result cannot be written the command ends with one line,
  ``archiver: error: cannot write the output to stdout: ...``, exit 1, as GNU tools do
  (``echo x >/dev/full``): before, every command ended in an ``OSError`` traceback. The
  work itself is done by then (``enqueue`` queued, ``retry`` moved). A reader that left
  (``| head``) stays the ``BrokenPipeError`` the CLI treats as a quiet exit 1.
- **stderr**: log lines are not the work. A log stream that refuses a line (``run >>
  /var/log/archiver.log 2>&1`` with /var full) loses that line, as the standard library's
  logging does, and the run goes on: before, the first log line raised inside the worker
  and the run exited 1 without a word, archiving nothing.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, TextIO, cast

from archiver.errors import ArchiverError


class OutputLost(ArchiverError):
    """The command's output could not be written to stdout."""


def lost(exc: OSError) -> OutputLost:
    """The one-line error for a write to stdout that failed with ``exc``."""
    reason = exc.strerror or type(exc).__name__
    return OutputLost(f"cannot write the output to stdout: {reason}")


class _GuardedStdout:
    """``sys.stdout`` whose write errors (other than a reader leaving) are :class:`OutputLost`."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise lost(exc) from None

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise lost(exc) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _QuietStderr:
    """``sys.stderr`` that loses what it cannot write instead of raising."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except (OSError, ValueError):
            return len(text)

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def guard_streams() -> None:
    """Make a failed write to stdout an :class:`OutputLost`, and one to stderr harmless.

    See the module docstring. Call once, before anything prints or logs.
    """
    if not isinstance(sys.stdout, _GuardedStdout):
        sys.stdout = cast(TextIO, _GuardedStdout(sys.stdout))
    if not isinstance(sys.stderr, _QuietStderr):
        sys.stderr = cast(TextIO, _QuietStderr(sys.stderr))


def write_line(stream: TextIO, line: str) -> None:
    """Write one log line and flush it; a stream that refuses it (full, closed) loses it."""
    with contextlib.suppress(OSError, ValueError):
        stream.write(line)
        stream.flush()


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
    except OutputLost as exc:  # the device is full: say so, unless the command did
        if code == 0:
            print(f"archiver: error: {exc}", file=sys.stderr)
        code = code or 1
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
    try:
        while view:
            view = view[os.write(fd, view[: 1 << 20]) :]
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise lost(exc) from None
