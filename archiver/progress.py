"""Progress of ``run --once``: a live bar on a terminal, periodic log lines otherwise."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, TextIO

from archiver.logs import get_logger
from archiver.worker import RunSummary

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress as RichProgress

LOG_EVERY_S = 10.0


def _done(summary: RunSummary) -> int:
    return summary.archived + summary.unchanged + summary.not_found + summary.failed


class Progress:
    """Called by the worker after every written batch.

    On a terminal: a rich progress bar (done/total, rate, ETA, failures so far). Not on a
    terminal: an ``archiver.progress`` log line every 10 s (the final summary is the
    JSON the command prints).
    """

    def __init__(self, stream: TextIO, tty: bool) -> None:
        self.tty = tty
        self.total: int | None = None
        self.started = time.monotonic()
        self._last_log = self.started
        self._bar: RichProgress | None = None
        self._task: Any = None
        self._console: Console | None = None
        if tty:
            from rich.console import Console

            self._console = Console(file=stream)

    @classmethod
    def for_stream(cls, stream: TextIO) -> Progress:
        """A bar when ``stream`` is a terminal, log lines otherwise."""
        return cls(stream, stream.isatty())

    def set_total(self, total: int) -> None:
        """How many IDs this run expects to finish (pending and in flight at its start)."""
        self.total = total
        if self.tty and self._bar is None:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TaskProgressColumn,
                TextColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("archiving"),
                BarColumn(),
                MofNCompleteColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[rate]:>8}/s"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[problems]}"),
                console=self._console,
                transient=False,
            )
            self._task = self._bar.add_task("archiving", total=total, rate="0", problems="")
            self._bar.start()

    def __call__(self, summary: RunSummary) -> None:
        done = _done(summary)
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = done / elapsed
        if self._bar is not None:
            total = max(self.total or 0, done)
            problems = (
                f"not found {summary.not_found:,}  failed {summary.failed:,}  retrying {summary.retried:,}"
            )
            self._bar.update(self._task, completed=done, total=total, rate=f"{rate:,.0f}", problems=problems)
            return
        now = time.monotonic()
        if now - self._last_log >= LOG_EVERY_S:
            self._last_log = now
            get_logger().info(
                "archiver.progress",
                done=done,
                total=self.total,
                rate_per_s=round(rate, 1),
                archived=summary.archived + summary.unchanged,
                not_found=summary.not_found,
                failed=summary.failed,
                retried=summary.retried,
            )

    def close(self) -> None:
        """Stop the bar (leaves its last state on screen)."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
