"""Graceful stop on SIGTERM/SIGINT, restoring the previous handlers afterwards."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
"""SIGHUP too: a closed terminal or SSH session stops a backfill gracefully, unless the
process was started to ignore it (nohup), which is respected."""


_deferred: list[int] = []
"""Stop signals that arrived before :func:`on_stop_signals` took over (see :func:`defer_stop_signals`)."""
_before_deferring: dict[int, Any] = {}
"""The handlers :func:`defer_stop_signals` replaced, for :func:`on_stop_signals` to restore."""


def defer_stop_signals() -> None:
    """Until :func:`on_stop_signals` takes over, remember a stop signal instead of dying of it.

    A command that commits what it read on a signal (``enqueue``) spends its first half
    second importing and opening the database; a SIGTERM then killed it (exit -15) and a
    SIGINT ended in ``interrupted`` (130). Now the first one is handed to
    :func:`on_stop_signals` when it is installed, so the command stops the usual way; a
    second one exits at once, as it would later.
    """

    def remember(signum: int, _frame: Any) -> None:
        _deferred.append(signum)
        if len(_deferred) > 1:
            exit_at_once(128 + signum)

    for sig in STOP_SIGNALS:
        if sig == signal.SIGHUP and signal.getsignal(sig) == signal.SIG_IGN:
            continue  # started under nohup: keep ignoring hangups
        _before_deferring.setdefault(sig, signal.getsignal(sig))
        signal.signal(sig, remember)


def exit_at_once(status: int) -> None:
    """A second stop signal: end the process now, and the writer processes it started.

    A writer process ignores stop signals (the parent's last batches must reach it) and
    ends when its pipe closes, but only once it reads the pipe again: one waiting on the
    database (SQLite's busy handler, a PostgreSQL lock) outlived the exit by up to a
    minute. Killed, its open transaction is rolled back; its rows keep their leases and
    return to ``pending`` when those expire, as the parent's own rows do.
    """
    from archiver.childproc import kill_started  # light: no database or HTTP imports

    kill_started()
    os._exit(status)


@contextmanager
def on_stop_signals(request_stop: Callable[[str], None]) -> Iterator[None]:
    """While inside, the first SIGTERM/SIGINT/SIGHUP calls ``request_stop``; a second exits at once.

    Exiting at once is safe: rows still leased return to ``pending`` when their lease expires.
    """
    import asyncio  # here, not at the top: defer_stop_signals runs before asyncio's 40 ms import

    loop = asyncio.get_running_loop()
    previous: dict[int, Any] = {}
    received: list[int] = []

    def handle(signum: int) -> None:
        received.append(signum)
        if len(received) > 1:
            exit_at_once(128 + signum)
        request_stop(signal.Signals(signum).name)

    installed = []
    for sig in STOP_SIGNALS:
        previous[sig] = _before_deferring.pop(sig) if sig in _before_deferring else signal.getsignal(sig)
        if sig == signal.SIGHUP and previous[sig] == signal.SIG_IGN:
            continue  # started under nohup: keep ignoring hangups
        loop.add_signal_handler(sig, handle, int(sig))
        installed.append(sig)
    while _deferred:  # arrived while the command was starting: act on it now
        loop.call_soon(handle, _deferred.pop(0))
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
            signal.signal(sig, previous[sig] if previous[sig] is not None else signal.SIG_DFL)


def quiet_late_thread_results() -> None:
    """Keep a worker thread's result for a loop that a stop already closed off stderr.

    Ctrl-C during a SQLite call: ``asyncio.run`` closes its loop, and aiosqlite's worker
    thread, finishing the call, hands its result (then its error) to the closed loop and
    dies of ``RuntimeError: Event loop is closed``, whose traceback followed (or preceded)
    ``archiver: interrupted``. Nobody waits for that result any more; every other
    exception in a thread is still printed.
    """
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if isinstance(args.exc_value, RuntimeError) and str(args.exc_value) == "Event loop is closed":
            return
        previous(args)

    threading.excepthook = hook


INTERRUPT_EXIT_S = 2.0
"""How long a command's clean-up after Ctrl-C may take before the process exits anyway."""


@contextmanager
def interrupt_backstop() -> Iterator[None]:
    """While inside, Ctrl-C ends the process within :data:`INTERRUPT_EXIT_S`, exit 130.

    Ctrl-C raises ``KeyboardInterrupt`` as usual, and the command cleans up and says
    ``archiver: interrupted``. That clean-up waited on the database: with another process
    holding SQLite's write lock, ``archiver retry`` took 58 s to act on Ctrl-C (the busy
    timeout). Nothing is lost by not waiting: the open transaction is rolled back. Commands
    that handle stop signals themselves (``run``, ``enqueue``, ``renormalize``,
    ``compact``) replace this handler while they run and keep their own deadline.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield  # a program's own SIGINT handling, or the deferral of launch.py: left alone
        return

    def on_sigint(_signum: int, _frame: Any) -> None:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        timer = threading.Timer(INTERRUPT_EXIT_S, _exit_interrupted)
        timer.daemon = True
        timer.start()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGINT) is on_sigint:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def _exit_interrupted() -> None:
    with contextlib.suppress(OSError, ValueError):
        os.write(2, b"archiver: interrupted\n")
    os._exit(130)
