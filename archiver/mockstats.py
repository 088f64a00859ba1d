"""Live counters of the mock Responses API (served at ``GET /_mock/stats``)."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

INCLUDE_RECORDS: Final = 16
ARRIVALS_KEPT: Final = 20_000
"""Retrieve-request arrival times kept in the stats (the last ones): bounded for benchmarks."""


@dataclass
class MockStats:
    """Live counters of the mock server (also served at ``GET /_mock/stats``)."""

    requests_total: int = 0
    requests_by_id: dict[str, int] = field(default_factory=dict)
    """Requests per response ID; also the per-ID fetch counter the scenarios use."""
    status_counts: dict[str, int] = field(default_factory=dict)
    in_flight: int = 0
    max_in_flight: int = 0
    dropped_total: int = 0
    """Connections closed without a response (the ``reset`` scenario)."""
    input_items_total: int = 0
    """Requests for ``/responses/{id}/input_items`` pages (not in ``requests_total``)."""
    input_items_by_id: dict[str, int] = field(default_factory=dict)
    arrivals: deque[float] = field(default_factory=lambda: deque(maxlen=ARRIVALS_KEPT))
    """Monotonic arrival times (seconds) of the last :data:`ARRIVALS_KEPT` requests (retrieve
    and input-item pages), for request-rate checks measured at the server."""
    include_by_id: dict[str, list[list[str]]] = field(default_factory=dict)
    """The ``include[]`` values of the requests for an ID that carried any (both routes, in
    arrival order, the first :data:`INCLUDE_RECORDS` per ID: bounded for long benchmarks)."""

    def reset(self) -> None:
        """Clear every counter; requests in progress still count as in flight."""
        self.requests_total = 0
        self.requests_by_id.clear()
        self.input_items_total = 0
        self.input_items_by_id.clear()
        self.include_by_id.clear()
        self.arrivals.clear()
        self.status_counts.clear()
        self.max_in_flight = self.in_flight
        self.dropped_total = 0

    def as_dict(self) -> dict[str, Any]:
        """The counters as the JSON object ``GET /_mock/stats`` answers."""
        return {
            "requests_total": self.requests_total,
            "requests_by_id": dict(self.requests_by_id),
            "status_counts": dict(self.status_counts),
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "dropped_total": self.dropped_total,
            "input_items_total": self.input_items_total,
            "input_items_by_id": dict(self.input_items_by_id),
            "include_by_id": {k: [list(v) for v in lists] for k, lists in self.include_by_id.items()},
            "arrivals": list(self.arrivals),
        }

    def max_in_window(self, window_s: float = 1.0) -> int:
        """The most requests that arrived within any ``window_s`` seconds."""
        return max_in_window(self.arrivals, window_s)


def max_in_window(times: Iterable[float], window_s: float = 1.0) -> int:
    """The most of ``times`` within any half-open window ``[t, t + window_s)``."""
    ordered = sorted(times)
    best = start = 0
    for end, at in enumerate(ordered):
        while at - ordered[start] >= window_s:
            start += 1
        best = max(best, end - start + 1)
    return best
