"""The circuit breaker: tells answers about one ID from answers about the whole endpoint.

A plain 404 of an unknown route, a redirect, a refused connection, or a refused key may
be about one ID or about every ID. The worker cannot tell from one answer, so it *holds
back* such results (they are not written, so no attempt is spent
and no ID is marked) until the next answer decides:

- an answer that proves the endpoint and key work (an archived body, or the provider's
  JSON error about one ID) means the held results were about their IDs: they are written
  as the per-ID outcomes they are;
- ``TRIP_AFTER`` different IDs held with no such answer between them, or held results
  that are all the worker has with no good answer for ``RECENT_GOOD_S``, trip the
  breaker: the held rows go back to ``pending`` with their attempts given back, and the
  run stops (``run --once``, exit 4; exit 3 for a refused key) or the daemon pauses and
  probes the endpoint again with backoff.

Server errors (5xx) are not held: retrying them is how a busy provider recovers, so they
are written as retries, and only a run of them on ``TRIP_AFTER_5XX`` different IDs lasting
``STREAK_5XX_MIN_S`` with no good answer trips the breaker (the worker then gives those
IDs their attempts back).

Pure state, no I/O: the worker (:mod:`archiver.worker`) acts on what it says.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from archiver.outcomes import Archived, Outcome, Permanent, Retry, StopAll
from archiver.store import FetchResult

TRIP_AFTER = 3
"""Different IDs answered with an endpoint symptom, no success between: the breaker trips."""

TRIP_AFTER_5XX = 5
"""Different IDs answered 5xx with no good answer between them ...  """

STREAK_5XX_MIN_S = 10.0
"""... for at least this long: then the provider is down, not shedding a burst of load."""

RECENT_GOOD_S = 60.0
"""Held results that are all the worker has do not trip the breaker when a good answer came
this recently: the endpoint and key worked a moment ago, so they are about their IDs."""

HOLD_MAX_S = 120.0
"""A result held back longer than this with no deciding answer trips the breaker."""

PAUSE_FIRST_S = 5.0
PAUSE_MAX_S = 300.0

Kind = Literal["plain_404", "redirect", "connect", "5xx", "refused"]
Verdict = Literal["write", "hold", "release"]


def symptom_of(outcome: Outcome) -> Kind | None:
    """The endpoint symptom an outcome shows, if any (``refused``: the key was refused)."""
    if isinstance(outcome, StopAll):
        return "refused"
    if isinstance(outcome, Retry | Permanent):
        return outcome.symptom
    return None


def proves_endpoint(outcome: Outcome) -> bool:
    """True for an answer only a working endpoint and an accepted key give.

    An archived body, or the provider's JSON error about this ID (404 not found, 400, 422
    ...). Timeouts, throttles and bad 200 bodies prove nothing either way.
    """
    if isinstance(outcome, Archived):
        return True
    if not isinstance(outcome, Retry | Permanent) or outcome.symptom is not None:
        return False
    code = outcome.status_code
    return code is not None and 400 <= code <= 499 and code not in (401, 403, 407, 408, 429)


@dataclass(frozen=True, slots=True)
class Trip:
    """The breaker tripped: why, and on what."""

    kind: Kind
    reason: str

    @property
    def key_refused(self) -> bool:
        """True when the account was refused (exit 3), not the endpoint down (exit 4)."""
        return self.kind == "refused"


class Breaker:
    """Holds back symptom results and decides when they are about the endpoint.

    Args:
        endpoint: how the endpoint is shown in messages, e.g.
            ``http://127.0.0.1:8080/v1/responses/…``.
        clock: monotonic clock (tests pass their own).
    """

    def __init__(self, endpoint: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.endpoint = endpoint
        self.held: dict[str, tuple[FetchResult, Kind, float]] = {}
        self.last_good = -RECENT_GOOD_S  # when a good answer last came (monotonic)
        # ID -> (first 5xx, attempts spent on 5xx) since the last good answer
        self.streak_5xx: dict[str, tuple[float, int]] = {}
        self.last_5xx: FetchResult | None = None
        self.open = False
        self.probing = False
        self.trips = 0
        self.last_trip: Trip | None = None
        self.paused_until = 0.0
        self._clock = clock

    def observe(self, result: FetchResult) -> tuple[Verdict, list[FetchResult]]:
        """What to do with one fetch result.

        Returns:
            (``write``: write it; ``hold``: keep it back; ``release``: give its row back
            without spending the attempt (the breaker is open), and held results that an
            answer just decided are about their IDs, to write now.
        """
        kind = symptom_of(result.outcome)
        if kind is None:
            if proves_endpoint(result.outcome):
                self.last_good = self._clock()
                decided = [r for r, _, _ in self.held.values()]
                self.held.clear()
                self.streak_5xx.clear()
                if self.open or self.probing:
                    self.open = self.probing = False
                return "write", decided
            return "write", []
        if self.open:
            return "release", []
        if kind == "5xx":
            # Written as the retry it is (retries are how a busy provider recovers), but
            # counted: a long enough run of them trips the breaker, and the caller then
            # gives these IDs their attempts back.
            first, spent = self.streak_5xx.get(result.job.response_id, (self._clock(), 0))
            self.streak_5xx[result.job.response_id] = (first, spent + 1)
            self.last_5xx = result
            return "write", []
        self.held[result.job.response_id] = (result, kind, self._clock())
        return "hold", []

    def should_trip(self, *, all_held: bool = False) -> Trip | None:
        """A :class:`Trip` when the held results say the endpoint (or key) is at fault.

        Args:
            all_held: nothing else is in flight or waiting, so no other answer will
                decide (a small queue, the end of a backfill). Then the held results trip
                the breaker unless a good answer came in the last ``RECENT_GOOD_S``; if one
                did, the caller writes them as per-ID outcomes (:meth:`take_held`).
        """
        if self.open:
            return None
        now = self._clock()
        if self.streak_5xx and (
            self.probing
            or (
                len(self.streak_5xx) >= TRIP_AFTER_5XX
                and now - min(first for first, _ in self.streak_5xx.values()) >= STREAK_5XX_MIN_S
            )
        ):
            return Trip("5xx", self._describe("5xx", len(self.streak_5xx)))
        if not self.held:
            return None
        kinds = Counter(kind for _, kind, _ in self.held.values())
        count = len(self.held)
        oldest = min(at for _, _, at in self.held.values())
        recently_good = now - self.last_good < RECENT_GOOD_S
        if (
            (all_held and not recently_good)
            or self.probing
            or count >= TRIP_AFTER
            or now - oldest > HOLD_MAX_S
        ):
            kind = "refused" if "refused" in kinds else kinds.most_common(1)[0][0]
            return Trip(kind, self._describe(kind, count))
        return None

    def take_held(self) -> list[FetchResult]:
        """Let go of the held results as answers about their own IDs (to be written)."""
        results = [r for r, _, _ in self.held.values()]
        self.held.clear()
        return results

    def trip(self) -> list[FetchResult]:
        """Open the breaker; returns the held results, whose rows go back to ``pending``."""
        released = [r for r, _, _ in self.held.values()]
        self.held.clear()
        self.streak_5xx.clear()
        self.open = True
        self.probing = False
        self.trips += 1
        pause = min(PAUSE_FIRST_S * 2 ** min(self.trips - 1, 10), PAUSE_MAX_S)
        self.paused_until = self._clock() + pause
        return released

    def pause_left(self) -> float:
        """Seconds left in the pause after a trip (0 once a probe may go)."""
        return max(self.paused_until - self._clock(), 0.0) if self.open else 0.0

    def start_probe(self) -> None:
        """Half-open: one ID is sent; a symptom on it trips at once, a good answer closes."""
        self.open = False
        self.probing = True

    def reset(self) -> None:
        """Closed and healthy (after a good answer)."""
        self.open = self.probing = False
        self.trips = 0

    def _describe(self, kind: Kind, count: int) -> str:
        held = [r for r, k, _ in self.held.values() if k == kind]
        if kind == "5xx" and self.last_5xx is not None:
            held = [self.last_5xx]
        sample = held[-1].outcome if held else None
        detail = getattr(sample, "reason", "") if sample is not None else ""
        ids = f"{count} different ID{'s' if count != 1 else ''}"
        if kind == "plain_404":
            return (
                f"every request to {self.endpoint} answers a plain 404, not the provider's JSON "
                f"({ids}): is /v1 (or the provider's API path) missing from the base URL?"
            )
        if kind == "redirect":
            return (
                f"every request to {self.endpoint} answers a redirect ({detail}): set the base URL "
                "to the address it redirects to (redirects are never followed: they would carry the key)"
            )
        if kind == "connect":
            return f"cannot connect to {self.endpoint} ({ids}): {detail}"
        if kind == "5xx":
            return (
                f"{self.endpoint} answers server errors on {ids} in a row ({detail}): the provider looks down"
            )
        return f"{detail} ({ids} refused in a row, none accepted)"
