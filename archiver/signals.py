"""Graceful stop on SIGTERM/SIGINT, restoring the previous handlers afterwards."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
"""SIGHUP too: a closed terminal or SSH session stops a backfill gracefully, unless the
process was started to ignore it (nohup), which is respected."""


@contextmanager
def on_stop_signals(request_stop: Callable[[str], None]) -> Iterator[None]:
    """While inside, the first SIGTERM/SIGINT/SIGHUP calls ``request_stop``; a second exits at once.

    Exiting at once is safe: rows still leased return to ``pending`` when their lease expires.
    """
    loop = asyncio.get_running_loop()
    previous: dict[int, Any] = {}
    received: list[int] = []

    def handle(signum: int) -> None:
        received.append(signum)
        if len(received) > 1:
            os._exit(128 + signum)
        request_stop(signal.Signals(signum).name)

    installed = []
    for sig in STOP_SIGNALS:
        previous[sig] = signal.getsignal(sig)
        if sig == signal.SIGHUP and previous[sig] == signal.SIG_IGN:
            continue  # started under nohup: keep ignoring hangups
        loop.add_signal_handler(sig, handle, int(sig))
        installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
            signal.signal(sig, previous[sig] if previous[sig] is not None else signal.SIG_DFL)
