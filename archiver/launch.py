"""The console script's first code: some commands take stop signals before their imports.

``archiver enqueue`` commits what it read on SIGTERM, SIGINT or SIGHUP and exits 0, and
``renormalize`` and ``compact`` stop after the batch in flight and exit 0. Their imports
(structlog, SQLAlchemy, the database driver) take a good part of a second on a loaded
host, and a signal in that time killed them (exit -15) or ended in a KeyboardInterrupt
traceback. This module imports almost nothing, asks
:func:`archiver.signals.defer_stop_signals` to hold such a signal until the command's
own handling is in place, then runs :func:`archiver.cli.console`.
"""

from __future__ import annotations

import contextlib
import os
import sys


def console() -> None:
    """The ``archiver`` console script and ``python -m archiver``.

    Every other command takes Ctrl-C while it starts (its imports, reading its settings)
    as ``archiver: interrupted``, exit 130: nothing is done yet, and a traceback of an
    import is no answer to a key the operator pressed.
    """
    try:
        if sys.argv[1:2] in (["enqueue"], ["renormalize"], ["compact"]):
            from archiver.signals import defer_stop_signals

            defer_stop_signals()
        from archiver.cli import console as run_command

        run_command()
    except KeyboardInterrupt:
        if sys.stderr is not None:  # not closed at start (2>&-)
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.write("archiver: interrupted\n")
                sys.stderr.flush()
        os._exit(130)  # a half-imported interpreter's teardown could only fail again
