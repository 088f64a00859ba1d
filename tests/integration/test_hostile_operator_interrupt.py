"""Ctrl-C in the middle of a SQLite call: the worker thread's late result must stay quiet.

``asyncio.run`` ends on Ctrl-C by cancelling the command and closing its loop. aiosqlite
runs each call on a worker thread; a call still running then finishes after the loop is
closed, hands its result (then its error) to the closed loop and dies of ``RuntimeError:
Event loop is closed``, whose traceback a hostile tester saw beside ``archiver:
interrupted`` (``check``, ``run --once``: about one Ctrl-C in ten). Made to happen here for
certain: a real aiosqlite call that takes a while, its caller cancelled, the loop closed.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import warnings
from pathlib import Path

import aiosqlite
import pytest

SLOW_QUERY = (
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000000) SELECT count(*) FROM n"
)


def close_the_loop_under_a_running_call(db: Path) -> None:
    """A call running on aiosqlite's thread when its loop is closed; returns once it ended."""
    before = set(threading.enumerate())

    async def command() -> None:
        conn = await aiosqlite.connect(db)
        query = asyncio.ensure_future(conn.execute(SLOW_QUERY))
        await asyncio.sleep(0.05)  # the query runs on the worker thread now
        query.cancel()  # what Ctrl-C does to the command

    # The connection cannot be closed once its loop is gone: its ResourceWarning is expected.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        asyncio.run(command())
        for thread in set(threading.enumerate()) - before:
            thread.join(timeout=30)
        gc.collect()


def test_a_call_finishing_after_the_loop_closed_is_no_traceback(tmp_path: Path) -> None:
    from archiver.signals import quiet_late_thread_results

    seen: list[BaseException | None] = []
    previous = threading.excepthook
    threading.excepthook = lambda args: seen.append(args.exc_value)  # what would be printed
    try:
        quiet_late_thread_results()
        close_the_loop_under_a_running_call(tmp_path / "a.db")
    finally:
        threading.excepthook = previous
    assert seen == []


def test_without_it_the_fault_happens(tmp_path: Path) -> None:
    """The control: the same closing, unquieted, does end the thread in that error."""
    seen: list[BaseException | None] = []
    previous = threading.excepthook
    threading.excepthook = lambda args: seen.append(args.exc_value)
    try:
        started = time.monotonic()
        close_the_loop_under_a_running_call(tmp_path / "a.db")
    finally:
        threading.excepthook = previous
    if not seen:
        pytest.skip(f"the query ended before the loop closed ({time.monotonic() - started:.2f} s)")
    assert isinstance(seen[0], RuntimeError) and str(seen[0]) == "Event loop is closed"
