"""A child process's own peak RSS, whatever the size of the pytest process that starts it.

``ru_maxrss`` of a child (``wait4``) also counts the memory of the process it was forked
from: at ``exec`` Linux folds the old address space's high-water mark into the child's.
A pytest-xdist worker grows past 600 MiB over the suite, so every child it starts
"peaked" there: memory-bound tests failed at 617 MiB for a command that used 150, and a
comparison of two runs measured the worker twice (0 MiB apart, whatever the command did).

:func:`measured` runs the command under a small launcher, which forks it and reports its
``wait4`` figure: the launcher's own ~10 MiB is all that is folded in.
"""

from __future__ import annotations

import sys
from pathlib import Path

LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(str(usage.ru_maxrss))
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


def measured(command: list[str], report: Path) -> list[str]:
    """``command`` (its first item an executable's path) run by the launcher, which writes
    the command's peak RSS in KiB to ``report`` when it ends (read it with :func:`peak_bytes`)."""
    return [sys.executable, "-c", LAUNCHER, str(report), *command]


def peak_bytes(report: Path) -> int:
    """The peak RSS the launcher wrote to ``report``, in bytes."""
    return int(report.read_text()) * 1024
