"""Progress of ``run --once``: a live bar on a terminal, periodic log lines otherwise.

While the bar is live it owns the terminal: log lines are printed above it through its
console (:func:`archiver.logs.send_lines_to`), never onto its unfinished line, and the
per-batch ``archiver.batch_written`` lines are left out unless the level is debug (the
bar shows those counts). One summary line ends the run.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, TextIO

from archiver.logs import get_logger, send_lines_to
from archiver.worker import RunSummary

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress as RichProgress

LOG_EVERY_S = 10.0
QUIET_UNDER_BAR = ("archiver.batch_written", "archiver.run_stopped")
"""Info events the bar replaces: its counts, and its closing summary line."""


def _done(summary: RunSummary) -> int:
    """IDs finished. ``unchanged`` bodies are already counted in ``archived`` (see RunSummary)."""
    return summary.archived + summary.not_found + summary.failed


def summary_line(summary: RunSummary, total: int | None, elapsed_s: float) -> str:
    """The one line that ends a run on a terminal (``elapsed_s`` when the summary has no duration)."""
    done = _done(summary)
    duration = summary.duration_s or elapsed_s
    rate = done / duration if duration > 0 else 0.0
    line = (
        f"done {done:,}"
        + (f" of {total:,}" if total is not None else "")
        + f" in {duration:.1f}s ({rate:,.0f}/s): archived {summary.archived:,}"
        + f" (unchanged {summary.unchanged:,}), not found {summary.not_found:,}, failed {summary.failed:,}"
    )
    if summary.remaining:
        line += f"; still pending {summary.remaining.get('pending', 0):,}"
    if summary.stop_reason:
        line += f"; stopped: {summary.stop_reason}"
    return line


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
        self._last: RunSummary | None = None
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
            send_lines_to(self._print_above, quiet=QUIET_UNDER_BAR)

    def _print_above(self, line: str) -> None:
        """A rendered log line (with its colours), printed above the live bar."""
        from rich.text import Text

        if self._bar is not None:
            self._bar.console.print(Text.from_ansi(line), soft_wrap=True)

    def __call__(self, summary: RunSummary) -> None:
        self._last = summary
        done = _done(summary)
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = done / elapsed
        if self._bar is not None:
            total = max(self.total or 0, done)
            problems = (
                f"not found {summary.not_found:,}  failed {summary.failed:,}  "
                f"retrying {summary.waiting_retry:,}"
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
                archived=summary.archived,
                not_found=summary.not_found,
                failed=summary.failed,
                retried=summary.retried,
                waiting_retry=summary.waiting_retry,
            )

    def close(self, summary: RunSummary | None = None) -> None:
        """Stop the bar (leaves its last state on screen), then print the summary line.

        Args:
            summary: the run's final summary; None when the run ended with an error (the
                line then shows the counts of the last batch, and the error follows).
        """
        if self._bar is None:
            return
        summary = summary or self._last
        if summary is not None:
            self.__call__(summary)  # the bar's last state is the run's final count
        send_lines_to(None)
        self._bar.stop()
        self._bar = None
        if summary is not None and self._console is not None:
            self._console.print(
                summary_line(summary, self.total, time.monotonic() - self.started),
                soft_wrap=True,
                highlight=False,
                markup=False,
            )
