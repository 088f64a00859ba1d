"""The circuit breaker: tells answers about one ID from answers about the whole endpoint.

A plain 404 of an unknown route, a redirect, a failed connection, or a refused key may be
about one ID or about every ID. The worker cannot tell from one answer, so it *holds
back* such results (they are not written, so no attempt is spent and no ID is marked)
until something decides:

- an answer that proves the endpoint and key work (an archived body, or the provider's
  JSON error about one ID) means the held results were about their IDs: they are written
  as the per-ID outcomes they are;
- when the held results look like the endpoint's fault (``TRIP_AFTER`` different IDs
  with no good answer between them, held results that are all the worker has, one held
  for ``HOLD_MAX_S``), the worker first **probes** the endpoint with one request of its
  own (an ID it archived, or one that cannot exist, whose answer on a working endpoint is
  the provider's JSON not-found error). If the probe proves the endpoint works, the held
  results are per-ID after all. If not, the breaker **trips**: the held rows go back to
  ``pending`` with their attempts given back, and the run stops (``run --once``, exit 4;
  exit 3 for a refused key) or the daemon pauses, probes again with backoff, and resumes
  when a probe proves the endpoint works.

Server errors (5xx) are not held: retrying them is how a busy provider recovers, so they
are written as retries, and only a run of them on ``TRIP_AFTER_5XX`` different IDs lasting
``STREAK_5XX_MIN_S`` with no good answer leads to a probe (and the worker gives those IDs
back the attempts the run spent on them if it trips). A 5xx on an ID's last attempt is
held, so an outage shorter than the 5xx rule cannot fail IDs for good.

Pure state, no I/O: the worker (:mod:`archiver.worker`) sends the probe and acts on what
this says.
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
"""Different IDs held back with no good answer between them: probe the endpoint."""

TRIP_AFTER_5XX = 5
"""Different IDs answered 5xx with no good answer between them ..."""

STREAK_5XX_MIN_S = 10.0
"""... for at least this long: then the provider may be down, not shedding a burst of load."""

HOLD_MAX_S = 120.0
"""A result held back longer than this with nothing deciding: probe the endpoint."""

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
    """The breaker is about to trip (or tripped): why, and on what."""

    kind: Kind
    reason: str
    probe: bool = True
    """Ask the endpoint first. Not for billing refusals: those are about the account."""
    error: str = ""
    """The last endpoint-wide answer behind it, as the fetcher described it (server text:
    redact before it leaves the process)."""

    @property
    def key_refused(self) -> bool:
        """True when the account was refused (exit 3), not the endpoint down (exit 4)."""
        return self.kind == "refused"


class Breaker:
    """Holds back symptom results and decides when to suspect the endpoint.

    Args:
        endpoint: how the endpoint is shown in messages, e.g.
            ``http://127.0.0.1:8080/v1/responses/…``.
        clock: monotonic clock (tests pass their own).
    """

    def __init__(self, endpoint: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.endpoint = endpoint
        self.held: dict[str, tuple[FetchResult, Kind, float]] = {}
        # ID -> (first 5xx, attempts spent on 5xx) since the last good answer
        self.streak_5xx: dict[str, tuple[float, int]] = {}
        self.last_5xx: FetchResult | None = None
        self.open = False
        self.trips = 0
        self.paused_until = 0.0
        self._clock = clock

    def observe(self, result: FetchResult) -> tuple[Verdict, list[FetchResult]]:
        """What to do with one fetch result.

        Returns:
            (``write``: write it; ``hold``: keep it back; ``release``: give its row back
            without spending the attempt (the breaker is open)), and held results that an
            answer just decided are about their IDs, to write now.
        """
        outcome = result.outcome
        kind = symptom_of(outcome)
        if kind is None:
            if proves_endpoint(outcome):
                return "write", self.vouch()
            return "write", []
        if self.open:
            return "release", []
        if kind == "5xx" and isinstance(outcome, Retry):
            # Written as the retry it is (retries are how a busy provider recovers), but
            # counted: a long enough run of them makes the worker probe the endpoint.
            first, spent = self.streak_5xx.get(result.job.response_id, (self._clock(), 0))
            self.streak_5xx[result.job.response_id] = (first, spent + 1)
            self.last_5xx = result
            return "write", []
        self.held[result.job.response_id] = (result, kind, self._clock())
        return "hold", []

    def vouch(self) -> list[FetchResult]:
        """The endpoint and key work (a good answer, or a probe): held results are per-ID.

        Closes the breaker and returns the held results, to be written.
        """
        decided = [r for r, _, _ in self.held.values()]
        self.held.clear()
        self.streak_5xx.clear()
        self.open = False
        return decided

    def should_trip(self, *, all_held: bool = False) -> Trip | None:
        """A :class:`Trip` when the held results suggest the endpoint (or key) is at fault.

        The worker probes the endpoint before it acts on it.

        Args:
            all_held: nothing else is in flight or waiting, so no other answer will decide
                (a small queue, the end of a backfill).
        """
        if self.open:
            return None
        now = self._clock()
        if self.held:
            kinds = Counter(kind for _, kind, _ in self.held.values())
            count = len(self.held)
            oldest = min(at for _, _, at in self.held.values())
            if all_held or count >= TRIP_AFTER or now - oldest > HOLD_MAX_S or "5xx" in kinds:
                kind = "refused" if "refused" in kinds else kinds.most_common(1)[0][0]
                if kind == "5xx":
                    count = len(set(self.held) | set(self.streak_5xx))
                billing = any(
                    isinstance(r.outcome, StopAll) and r.outcome.billing for r, _, _ in self.held.values()
                )
                return Trip(
                    kind, self._describe(kind, count), probe=not billing, error=self._sample_error(kind)
                )
        if (
            len(self.streak_5xx) >= TRIP_AFTER_5XX
            and now - min(first for first, _ in self.streak_5xx.values()) >= STREAK_5XX_MIN_S
        ):
            return Trip("5xx", self._describe("5xx", len(self.streak_5xx)), error=self._sample_error("5xx"))
        return None

    def trip(self) -> list[FetchResult]:
        """Open the breaker; returns the held results, whose rows go back to ``pending``."""
        released = [r for r, _, _ in self.held.values()]
        self.held.clear()
        self.streak_5xx.clear()
        self.open = True
        self.trips += 1
        pause = min(PAUSE_FIRST_S * 2 ** min(self.trips - 1, 10), PAUSE_MAX_S)
        self.paused_until = self._clock() + pause
        return released

    def pause_left(self) -> float:
        """Seconds left in the pause after a trip (0 once a probe may go)."""
        return max(self.paused_until - self._clock(), 0.0) if self.open else 0.0

    def reset(self) -> None:
        """Closed and healthy (a probe proved the endpoint works)."""
        self.open = False
        self.trips = 0

    def _sample_error(self, kind: Kind) -> str:
        """The reason of the newest held (or, for 5xx, last) result of this kind."""
        held = [r for r, k, _ in self.held.values() if k == kind]
        if kind == "5xx" and self.last_5xx is not None and not held:
            held = [self.last_5xx]
        return str(getattr(held[-1].outcome, "reason", "")) if held else ""

    def _describe(self, kind: Kind, count: int) -> str:
        detail = self._sample_error(kind)
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
