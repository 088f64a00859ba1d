"""The allowed range of every numeric setting and option, in one table.

A value outside its range (``nan``, ``inf``, a negative timeout, a port of 70000, a
concurrency of a billion, a 30-digit integer that SQLite cannot store) is refused with
one line naming the flag or variable and the range, exit 2, whether it came from a flag,
an ``ARCHIVER_*`` variable or the config file; never a traceback, a hang or 22 GB of
tasks later. The CLI parses flags and variables with :func:`parser`, and
:class:`archiver.settings.Settings` checks its fields against :data:`SETTING_RANGES`
again (the config file and Python callers build Settings directly).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass

DAY_S = 86_400.0


@dataclass(frozen=True)
class Range:
    """``low <= value <= high`` (``low < value`` when ``low_open``); whole numbers if ``whole``."""

    low: float
    high: float
    low_open: bool = False
    whole: bool = False

    def problem(self, value: float) -> str | None:
        """None when ``value`` is in range, else what it must be."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"must be {self.describe()}"
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be {self.describe()}"
        if self.whole and not float(value).is_integer():
            return f"must be {self.describe()}"
        below = value <= self.low if self.low_open else value < self.low
        if below or value > self.high:
            return f"must be {self.describe()}"
        return None

    def describe(self) -> str:
        kind = "a whole number" if self.whole else "a number"
        low = _shown(self.low)
        bound = f"above {low}" if self.low_open else f"from {low}"
        return f"{kind} {bound} to {_shown(self.high)}"


def _shown(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else f"{number:g}"


def whole(low: int, high: int) -> Range:
    return Range(low, high, whole=True)


def seconds(high: float = DAY_S, *, zero_ok: bool = True) -> Range:
    return Range(0.0, high, low_open=not zero_ok)


SETTING_RANGES: dict[str, Range] = {
    "request_timeout": seconds(zero_ok=False),
    "connect_timeout": seconds(3600.0, zero_ok=False),
    "concurrency": whole(1, 4096),
    "max_attempts": whole(1, 1000),
    "batch_size": whole(1, 100_000),
    "max_held_mb": Range(0.0, 1 << 20, low_open=True),
    "max_body_mb": Range(0.0, 4096.0, low_open=True),
    "lease_seconds": Range(1.0, DAY_S),
    "grace_seconds": seconds(),
    "final_write_seconds": seconds(3600.0),
    "poll_interval": seconds(3600.0),
    "drain_horizon": seconds(7 * DAY_S),
    "backoff_base": seconds(),
    "backoff_cap": seconds(),
    "max_server_wait": seconds(),
    "not_found_recheck": seconds(),
    "repoll": seconds(),
    "max_polls": whole(1, 1_000_000),
    "max_rps": Range(0.0, 100_000.0, low_open=True),
    "retention_days": Range(0.0, 36_500.0, low_open=True),
    "metrics_port": whole(0, 65_535),
    "metrics_refresh": seconds(zero_ok=False),
}
"""Settings fields and their ranges (the ones a flag or variable sets)."""

OPTION_RANGES: dict[str, Range] = {
    "limit": whole(0, 1_000_000),
    "max_pending_age": seconds(10 * 365 * DAY_S),
    "max_expired_leases": whole(0, 1_000_000_000),
    "chunk_size": whole(1, 1_000_000),
    "port": whole(0, 65_535),
    "count": whole(1, 1_000_000),
}
"""Options of single commands that are not Settings fields (``status --limit`` ...)."""


def parser(rng: Range) -> Callable[[str], float | int]:
    """An argparse ``type=`` for numbers in ``rng``; its error names the range."""

    def parse(text: str) -> float | int:
        try:
            value: float | int = int(text) if rng.whole else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {rng.describe()}") from None
        problem = rng.problem(value)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    return parse


def setting_parser(field_name: str, type_: Callable[[str], object]) -> Callable[[str], object]:
    """The parser of a Settings field's flag: ranged when the field has a range."""
    rng = SETTING_RANGES.get(field_name)
    return parser(rng) if rng is not None and type_ in (int, float) else type_
