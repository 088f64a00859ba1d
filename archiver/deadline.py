"""The stop deadline: once a stop is asked for, database work ends by a fixed time.

A stop signal gives the process a budget: ``run`` lets in-flight fetches finish for
``--grace-seconds`` and writes what finished, ``enqueue`` commits what it read,
``renormalize`` and ``compact`` finish the batch in flight. With the database down,
restarting or locked by another process, each of those writes retried for a minute
and more (:func:`archiver.db_retry.with_db_retry`), and systemd killed the process first.

A :class:`StopDeadline` is the time the budget ends: ``budget_s`` after the first stop
request. Work run through :meth:`StopDeadline.run` is cut when it passes (also work
begun before the stop: the deadline reschedules it), and raises
:class:`StopDeadlinePassed`; ``with_db_retry`` takes one, so no backoff sleep and no
new attempt outlasts it. What is not written by then keeps its lease and is recovered
once the lease expires, like after a crash: nothing archived is lost.

A call cut this way may leave a thread behind that cannot be interrupted: a SQLite
statement waits for another process's write lock inside SQLite's busy handler, which
no signal or ``interrupt()`` ends. :func:`exit_at_deadline` is the backstop for the
command line: if the process is still there :data:`EXIT_MARGIN_S` after the deadline,
it logs one line and exits at once (what is left is safe to abandon: SQLite and
PostgreSQL roll the open transaction back).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

from archiver.errors import ArchiverError
from archiver.logs import get_logger

T = TypeVar("T")

EXIT_MARGIN_S = 1.0
"""How long after its deadline a command-line process is ended regardless (see :func:`exit_at_deadline`)."""


class StopDeadlinePassed(ArchiverError):
    """The stop deadline passed before the database answered."""


class StopDeadline:
    """The time by which a stopping process must be done with the database.

    Args:
        budget_s: seconds from the first :meth:`start` (the stop request) to the deadline.
    """

    def __init__(self, budget_s: float) -> None:
        self.budget_s = budget_s
        self._at: float | None = None  # time.monotonic() of the deadline, once started
        self._started = asyncio.Event()
        self._on_start: list[Callable[[float], None]] = []

    @property
    def started(self) -> bool:
        """A stop was requested."""
        return self._at is not None

    def start(self) -> None:
        """The stop is requested: the deadline is ``budget_s`` from now (the first call counts)."""
        if self._at is not None:
            return
        self._at = time.monotonic() + self.budget_s
        self._started.set()
        for call in self._on_start:
            call(self._at)

    def left(self) -> float | None:
        """Seconds to the deadline (0 once passed); None before a stop is requested."""
        return None if self._at is None else max(self._at - time.monotonic(), 0.0)

    @property
    def passed(self) -> bool:
        """The stop was requested and its deadline is over."""
        return self._at is not None and time.monotonic() >= self._at

    def on_start(self, call: Callable[[float], None]) -> None:
        """Call ``call(deadline)`` (``time.monotonic()`` time) when the stop is requested."""
        if self._at is not None:
            call(self._at)
        else:
            self._on_start.append(call)

    def forget(self, call: Callable[[float], None]) -> None:
        """Undo :meth:`on_start` (a call already made stays made)."""
        with contextlib.suppress(ValueError):
            self._on_start.remove(call)

    async def run(self, work: Callable[[], Awaitable[T]]) -> T:
        """``await work()``, given up at the deadline (also one set while it runs).

        Work given up is cancelled and not waited for: a driver may take seconds more to
        clean up after a cancelled call (asyncpg closes a connection gracefully for up to
        2 s; a server out of reach never answers), and the process is leaving anyway.

        Raises:
            StopDeadlinePassed: the deadline passed first, or had passed already (``work``
                was not started).
        """
        if self.passed:
            raise self._passed()
        task: asyncio.Future[T] = asyncio.ensure_future(work())
        try:
            while not task.done() and not self.passed:
                left = self.left()
                if left is None:
                    started = asyncio.ensure_future(self._started.wait())
                    try:
                        await asyncio.wait((task, started), return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        started.cancel()
                else:
                    await asyncio.wait({task}, timeout=left)
        except asyncio.CancelledError:
            task.cancel()
            task.add_done_callback(_forget)
            raise
        if task.done():
            return task.result()
        task.cancel()
        task.add_done_callback(_forget)
        raise self._passed()

    def _passed(self) -> StopDeadlinePassed:
        return StopDeadlinePassed(
            f"the database did not answer by the stop deadline ({self.budget_s:g} s after the stop request)"
        )


def _forget(task: asyncio.Future[Any]) -> None:
    """Retrieve the outcome of work given up (no "exception was never retrieved")."""
    if not task.cancelled():
        task.exception()


_EXIT_ENABLED: list[bool] = [False]


def enable_exit_at_deadline() -> None:
    """Let :func:`exit_at_deadline` end the process: the console script does, before the
    command runs (a program or a test that calls the commands keeps its process)."""
    _EXIT_ENABLED[0] = True


@contextlib.contextmanager
def exit_at_deadline(deadline: StopDeadline, status: int = 1) -> Iterator[None]:
    """A process still running :data:`EXIT_MARGIN_S` after ``deadline`` exits with ``status``.

    For the console script only (see :func:`enable_exit_at_deadline`): the structured
    path (:meth:`StopDeadline.run`) ends the work at the deadline; this ends what it
    could not interrupt (see the module docstring), after one log line. When the block
    ends before the deadline, without an error, it is called off; otherwise it stays
    armed for the rest of the process: what the block gave up may still hold the event
    loop's last clean-up (``asyncio.run`` waits for every task it cancels).
    """
    timers: list[threading.Timer] = []

    def arm(at: float) -> None:
        if not _EXIT_ENABLED[0]:
            return
        t = threading.Timer(max(at - time.monotonic(), 0) + EXIT_MARGIN_S, _exit_now, (deadline, status))
        t.daemon = True
        t.start()
        timers.append(t)

    deadline.on_start(arm)
    try:
        yield
    except BaseException:
        deadline.forget(arm)
        raise
    deadline.forget(arm)
    if not deadline.passed:
        for t in timers:
            t.cancel()


def _exit_now(deadline: StopDeadline, status: int) -> None:
    from archiver.childproc import kill_started

    with contextlib.suppress(Exception):
        kill_started()  # else a writer process waiting on the database outlives the exit
    with contextlib.suppress(Exception):
        get_logger().error(
            "archiver.stop_deadline_exit",
            error="the database did not let go by the stop deadline; exiting now "
            "(rows still leased return to pending when their lease expires)",
            wait_s=deadline.budget_s + EXIT_MARGIN_S,
        )
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    os._exit(status)
