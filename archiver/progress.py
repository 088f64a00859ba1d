"""A one-line live progress display for ``run --once`` on a terminal."""

from __future__ import annotations

import time
from typing import TextIO

from archiver.worker import RunSummary


class Progress:
    """Redraws one stderr line as batches are written; silent when not a terminal."""

    def __init__(self, stream: TextIO, enabled: bool) -> None:
        self.stream = stream
        self.enabled = enabled
        self.started = time.monotonic()
        self._last_draw = 0.0

    @classmethod
    def for_stream(cls, stream: TextIO) -> Progress:
        """Enabled only when ``stream`` is a terminal."""
        return cls(stream, stream.isatty())

    def __call__(self, summary: RunSummary) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last_draw < 0.2:
            return
        self._last_draw = now
        done = summary.archived + summary.unchanged + summary.not_found + summary.failed
        rate = done / max(now - self.started, 1e-9)
        self.stream.write(
            f"\r  done {done:,}  archived {summary.archived + summary.unchanged:,}"
            f"  not found {summary.not_found:,}"
            f"  failed {summary.failed:,}  retrying {summary.retried:,}  {rate:,.0f}/s   "
        )
        self.stream.flush()

    def close(self) -> None:
        """End the progress line."""
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
