"""The stop deadline: work and database retries end by it (see archiver/deadline.py)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest

from archiver.db_retry import with_db_retry
from archiver.deadline import EXIT_MARGIN_S, StopDeadline, StopDeadlinePassed, exit_at_deadline


async def test_work_begun_before_the_stop_is_given_up_at_the_deadline() -> None:
    deadline = StopDeadline(0.2)
    cancelled = asyncio.Event()

    async def slow() -> int:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return 1

    running = asyncio.create_task(deadline.run(slow))
    await asyncio.sleep(0.1)
    assert not running.done(), "cut before any stop was requested"
    started = time.monotonic()
    deadline.start()
    with pytest.raises(StopDeadlinePassed, match=r"0\.2 s after the stop request"):
        await running
    assert 0.15 < time.monotonic() - started < 2
    await asyncio.wait_for(cancelled.wait(), 1)


async def test_no_work_starts_past_the_deadline_and_quick_work_is_untouched() -> None:
    deadline = StopDeadline(0.05)
    calls = []

    async def work() -> str:
        calls.append(1)
        return "done"

    assert await deadline.run(work) == "done"  # no stop: plain await
    deadline.start()
    assert await deadline.run(work) == "done"  # before the deadline
    await asyncio.sleep(0.1)
    with pytest.raises(StopDeadlinePassed):
        await deadline.run(work)
    assert len(calls) == 2


async def test_database_retries_end_at_the_deadline() -> None:
    """8 attempts back off ~23 s in all; a stop ends them at its deadline, no attempt after."""
    deadline = StopDeadline(0.3)
    attempts: list[float] = []

    async def refused() -> None:
        attempts.append(time.monotonic())
        raise ConnectionRefusedError("connect call failed")  # transient: retried

    deadline.start()
    started = time.monotonic()
    with pytest.raises(StopDeadlinePassed):
        await with_db_retry(refused, deadline=deadline)
    took = time.monotonic() - started
    assert 0.25 < took < 2, took
    assert 1 < len(attempts) < 8
    assert all(at - started < 0.3 for at in attempts)


async def test_without_a_stop_the_retries_are_unchanged() -> None:
    attempts = []

    async def refused() -> None:
        attempts.append(1)
        raise ConnectionRefusedError("connect call failed")

    with pytest.raises(ConnectionRefusedError):
        await with_db_retry(refused, attempts=3, first_delay=0.01, deadline=StopDeadline(0.01))
    assert len(attempts) == 3


async def test_the_backstop_is_off_outside_the_console_script() -> None:
    """A program or test that runs a command keeps its process, whatever the deadline."""
    deadline = StopDeadline(0.0)
    with pytest.raises(RuntimeError), exit_at_deadline(deadline):
        deadline.start()
        raise RuntimeError("given up")
    await asyncio.sleep(EXIT_MARGIN_S + 0.3)  # still here


BACKSTOP = """
import asyncio, time
from archiver.deadline import StopDeadline, enable_exit_at_deadline, exit_at_deadline

async def main():
    deadline = StopDeadline(0.2)
    with exit_at_deadline(deadline):
        deadline.start()
        time.sleep(30)  # a thread SQLite holds in its busy handler: nothing interrupts it

enable_exit_at_deadline()
asyncio.run(main())
"""


def test_the_backstop_ends_a_process_the_deadline_could_not() -> None:
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-c", BACKSTOP], capture_output=True, timeout=30, check=False)
    took = time.monotonic() - started
    assert out.returncode == 1, out.stderr
    assert took < 0.2 + EXIT_MARGIN_S + 2, took
    said = out.stdout + out.stderr  # structlog's default output: logging is not configured here
    assert b"archiver.stop_deadline_exit" in said
    assert b"Traceback" not in said
