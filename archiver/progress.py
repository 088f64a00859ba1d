"""Progress of ``run --once``, ``renormalize`` and ``compact``: a live bar on a terminal,
periodic log lines otherwise.

While the bar is live it owns the terminal: log lines are printed above it through its
console (:func:`archiver.logs.send_lines_to`), never onto its unfinished line, and the
per-batch ``archiver.batch_written`` lines are left out unless the level is debug (the
bar shows those counts). One summary line ends the run.
"""

from __future__ import annotations

import time
from functools import partial
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


def _live_bar(console: Console, label: str, total: int) -> tuple[RichProgress, Any]:
    """A started bar: label, bar, done/total, percent, rate, ETA, and a ``detail`` text."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.progress import Progress as RichProgress

    bar = RichProgress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]:>8}/s"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[detail]}"),
        console=console,
        transient=False,
    )
    task = bar.add_task(label, total=total, rate="0", detail="")
    bar.start()
    return bar, task


def _print_above(bar: RichProgress, line: str) -> None:
    """A rendered log line (with its colours), printed above the live bar."""
    from rich.text import Text

    bar.console.print(Text.from_ansi(line), soft_wrap=True)


class _Display:
    """A bar on a terminal, or an ``archiver.progress`` log line every 10 s off it.

    Args:
        stream: where the bar goes (stderr).
        tty: whether to draw a bar.
        label: the bar's first column.
        quiet: info events the bar replaces (left out while it is live).
    """

    def __init__(self, stream: TextIO, tty: bool, label: str, quiet: tuple[str, ...] = ()) -> None:
        self.tty = tty
        self.label = label
        self.quiet = quiet
        self.total: int | None = None
        self.started = time.monotonic()
        self._last_log = self.started
        self._bar: RichProgress | None = None
        self._task: Any = None
        self._console: Console | None = None
        if tty:
            from rich.console import Console

            self._console = Console(file=stream)

    def start(self, total: int) -> None:
        """How many items the work expects to finish."""
        self.total = total
        if self._console is not None and self._bar is None:
            self._bar, self._task = _live_bar(self._console, self.label, total)
            send_lines_to(partial(_print_above, self._bar), quiet=self.quiet)

    def update(self, done: int, detail: str, **log_fields: Any) -> None:
        """``done`` items so far; ``detail`` beside the bar, ``log_fields`` (else detail) in the log line."""
        rate = done / max(time.monotonic() - self.started, 1e-9)
        if self._bar is not None:
            total = max(self.total or 0, done)
            self._bar.update(self._task, completed=done, total=total, rate=f"{rate:,.0f}", detail=detail)
            return
        now = time.monotonic()
        if now - self._last_log >= LOG_EVERY_S:
            self._last_log = now
            get_logger().info(
                "archiver.progress",
                done=done,
                total=self.total,
                rate_per_s=round(rate, 1),
                **(log_fields or {"detail": detail}),
            )

    def _stop(self) -> bool:
        """Stop the bar (its last state stays on screen); False when there was none."""
        if self._bar is None:
            return False
        send_lines_to(None)
        self._bar.stop()
        self._bar = None
        return True


class Progress(_Display):
    """Called by the worker after every written batch.

    On a terminal: a rich progress bar (done/total, rate, ETA, failures so far). Not on a
    terminal: an ``archiver.progress`` log line every 10 s (the final summary is the
    JSON the command prints).
    """

    def __init__(self, stream: TextIO, tty: bool) -> None:
        super().__init__(stream, tty, "archiving", QUIET_UNDER_BAR)
        self._last: RunSummary | None = None

    @classmethod
    def for_stream(cls, stream: TextIO) -> Progress:
        """A bar when ``stream`` is a terminal, log lines otherwise."""
        return cls(stream, stream.isatty())

    def set_total(self, total: int) -> None:
        """How many IDs this run expects to finish (pending and in flight at its start)."""
        self.start(total)

    def __call__(self, summary: RunSummary) -> None:
        self._last = summary
        problems = (
            f"not found {summary.not_found:,}  failed {summary.failed:,}  retrying {summary.waiting_retry:,}"
        )
        self.update(
            _done(summary),
            problems,
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
        self._stop()
        if summary is not None and self._console is not None:
            self._console.print(
                summary_line(summary, self.total, time.monotonic() - self.started),
                soft_wrap=True,
                highlight=False,
                markup=False,
            )


class WorkProgress(_Display):
    """Progress of a walk over the archive (``renormalize``, ``compact``): a bar with
    done/total, rate, ETA and what became of them, log lines above it; off a terminal an
    ``archiver.progress`` log line every 10 s."""

    @classmethod
    def for_stream(cls, stream: TextIO, label: str) -> WorkProgress:
        """A bar when ``stream`` is a terminal, log lines otherwise."""
        return cls(stream, stream.isatty(), label)

    def close(self) -> None:
        """Stop the bar (its last state stays on screen)."""
        self._stop()
