"""Stop signals: SIGTERM, SIGINT and SIGHUP request a graceful stop; nohup is respected."""

from __future__ import annotations

import asyncio
import os
import signal

from archiver.signals import on_stop_signals


async def test_each_stop_signal_requests_a_stop_once_and_handlers_are_restored() -> None:
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        original = signal.getsignal(sig)
        if original == signal.SIG_IGN:
            # The suite itself runs under nohup (or similar): test as a plain shell runs it.
            signal.signal(sig, signal.SIG_DFL)
        try:
            before = signal.getsignal(sig)
            reasons: list[str] = []
            with on_stop_signals(reasons.append):
                os.kill(os.getpid(), sig)
                await asyncio.sleep(0.05)
            assert reasons == [signal.Signals(sig).name]
            assert signal.getsignal(sig) == before
        finally:
            signal.signal(sig, original)


async def test_an_ignored_sighup_stays_ignored() -> None:
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        reasons: list[str] = []
        with on_stop_signals(reasons.append):
            os.kill(os.getpid(), signal.SIGHUP)
            await asyncio.sleep(0.05)
        assert reasons == []
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)
