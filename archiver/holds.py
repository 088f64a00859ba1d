"""Why a source's IDs wait: the holds that workers record, gathered per source.

A worker whose circuit breaker is open (the endpoint answers plain 404s, redirects,
refuses connections, a run of 5xx) or whose key is refused (401/403, billing) keeps its
source's IDs ``pending`` without spending attempts. Those rows carry no error of their
own, so the queue alone shows a pending count that never drops. The worker records the
hold in its ``archive_workers`` row (:func:`archiver.workers.record_worker`): what
(``hold_kind``), the trip's message (``detail``), the last endpoint-wide error text
(``hold_error``, redacted), since when (``state_since``) and when it probes next
(``next_probe_at``). When a probe proves the endpoint works again it records ``ok``,
which clears them; a clean exit deletes the row. A ``run --once`` serving several
sources keeps the hold of a source its breaker stopped (with no next probe: that run will
not try it again) while it drains the others (:class:`archiver.runner.Runner`).

Several processes may serve one source (a fleet on PostgreSQL). A source is held when
any live worker holds it, and its entry says so once: what, why and the last error of
the freshest report (the holders of one source share its endpoint and key, so they
normally agree), since the earliest holder's hold began, the soonest next probe of a
holder that is not stale (any holder may resume the source), every holder with its own
figures, and the live workers that still fetch the source (then the fault is one
process's, e.g. its key file).

A row its worker stopped refreshing (the process died) is shown with its age until it
is :data:`archiver.workers.DEFAULT_MAX_AGE_S` old, marked stale after
:data:`STALE_AFTER_S`, and ignored after that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from archiver.db import now_sql
from archiver.workers import DEFAULT_MAX_AGE_S, HEALTH_REFRESH_S

if TYPE_CHECKING:
    from archiver.breaker import Trip

HOLD_KINDS = ("plain_404", "redirect", "connect", "5xx", "refused", "billing")
"""What holds a source: the breaker's symptoms, a refused key, a billing refusal."""

STALE_AFTER_S = 2 * HEALTH_REFRESH_S + 10
"""A live worker refreshes its row every ``HEALTH_REFRESH_S``: one older than this may be
a dead process's."""

WHAT = {
    "plain_404": "endpoint paused (plain 404s, not the provider's JSON)",
    "redirect": "endpoint paused (redirects)",
    "connect": "endpoint paused (cannot connect)",
    "5xx": "endpoint paused (server errors across IDs)",
    "refused": "key refused",
    "billing": "account refused (billing)",
}


@dataclass(frozen=True, slots=True)
class Hold:
    """Why one worker holds its source, as it records it.

    Attributes:
        kind: one of :data:`HOLD_KINDS`.
        error: the last endpoint-wide error text (server text: redacted when recorded).
        probe_in_s: seconds until the worker's next probe of the endpoint.
    """

    kind: str
    error: str | None
    probe_in_s: float | None

    @classmethod
    def of_trip(cls, trip: Trip, probe_error: str | None, probe_in_s: float | None) -> Hold:
        """The hold a tripped breaker makes; the newest failed probe's answer is the last error."""
        return cls(hold_kind(trip), probe_error or trip.error or None, probe_in_s)


def hold_kind(trip: Trip) -> str:
    """What holds the source, one of :data:`HOLD_KINDS` (a billing refusal trips unprobed)."""
    return "billing" if trip.key_refused and not trip.probe else trip.kind


@dataclass(frozen=True, slots=True)
class Holder:
    """One live worker's hold of a source, with ages by the database clock."""

    owner: str
    state: str
    kind: str | None
    reason: str | None
    error: str | None
    endpoint: str | None
    since: float
    held_for_s: float
    next_probe_at: float | None
    next_probe_in_s: float | None
    reported_age_s: float

    @classmethod
    def from_row(cls, row: Any) -> Holder | None:
        """Build from a row of :func:`held_sources`'s query (columns by name); None when a
        time is no time (text in a SQLite column, NaN, Infinity, a date past year 9999: a
        row edited by hand or written by something else is no live worker's report)."""
        m = row._mapping
        times = {name: _time(m[name]) for name in _TIMES}
        if (
            any(times[name] is None and m[name] is not None for name in _TIMES)
            or times["state_since"] is None
        ):
            return None
        probe_in = times["next_probe_in_s"]
        return cls(
            owner=m["owner"],
            state=m["state"],
            kind=m["hold_kind"],
            reason=m["detail"],
            error=m["hold_error"],
            endpoint=m["base_url"],
            since=times["state_since"],
            held_for_s=max(times["held_for_s"] or 0.0, 0.0),
            next_probe_at=times["next_probe_at"],
            next_probe_in_s=None if probe_in is None else max(probe_in, 0.0),
            reported_age_s=max(times["reported_age_s"] or 0.0, 0.0),
        )

    def as_dict(self) -> dict[str, Any]:
        """One entry of ``holders`` in ``status --json``."""
        return {
            "owner": self.owner,
            "kind": self.kind,
            "since": utc_text(self.since),
            "held_for_s": round(self.held_for_s, 3),
            "next_probe_in_s": None if self.next_probe_in_s is None else round(self.next_probe_in_s, 3),
            "reported_age_s": round(self.reported_age_s, 3),
        }


@dataclass(frozen=True, slots=True)
class SourceHold:
    """A held source: its live holders, and the live workers that still fetch it."""

    source: str
    holders: list[Holder]
    fetching: list[str]

    def as_dict(self, pending: int | None = None) -> dict[str, Any]:
        """The ``held_sources`` entry of ``status --json`` (see the module docstring)."""
        fresh = min(self.holders, key=lambda h: h.reported_age_s)
        first = max(self.holders, key=lambda h: h.held_for_s)
        # A stale holder's probe may never come (its worker died): a live one's is the next.
        live = [h for h in self.holders if h.reported_age_s <= STALE_AFTER_S] or self.holders
        probes = [h for h in live if h.next_probe_at is not None]
        soonest = min(probes, key=lambda h: h.next_probe_at or 0.0) if probes else None
        return {
            "kind": fresh.kind,
            "state": fresh.state,
            "reason": fresh.reason,
            "last_error": fresh.error,
            "endpoint": fresh.endpoint,
            "since": utc_text(first.since),
            "held_for_s": round(first.held_for_s, 3),
            "next_probe_at": None if soonest is None else utc_text(soonest.next_probe_at),
            "next_probe_in_s": None if soonest is None else round(soonest.next_probe_in_s or 0.0, 3),
            "reported_age_s": round(fresh.reported_age_s, 3),
            "stale": fresh.reported_age_s > STALE_AFTER_S,
            "pending": pending,
            "holders": [h.as_dict() for h in self.holders],
            "fetching": list(self.fetching),
        }


_TIMES = ("state_since", "updated_at", "held_for_s", "next_probe_at", "next_probe_in_s", "reported_age_s")
_LAST_TIME_S = 253402300799.0  # 9999-12-31T23:59:59Z, datetime's last second


def _time(value: Any) -> float | None:
    """A database-clock time (or a difference of two) as a float, None when it is none."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and abs(number) <= _LAST_TIME_S else None


def utc_text(unix_s: float | None) -> str | None:
    """``2026-12-02T01:02:03Z`` (database-clock unix seconds, to the second)."""
    if unix_s is None:
        return None
    return datetime.fromtimestamp(unix_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def held_sources(conn: AsyncConnection, *, max_age_s: float = DEFAULT_MAX_AGE_S) -> list[SourceHold]:
    """The sources some live worker holds, by name (rows older than ``max_age_s`` ignored)."""
    now = now_sql(conn.dialect.name)
    rows = (
        await conn.execute(
            text(
                "SELECT owner, source, state, hold_kind, detail, hold_error, base_url, state_since, "
                f"updated_at, {now} - state_since AS held_for_s, next_probe_at, "
                f"next_probe_at - {now} AS next_probe_in_s, {now} - updated_at AS reported_age_s "
                f"FROM archive_workers WHERE source IS NOT NULL AND updated_at >= {now} - :age "
                "ORDER BY source, owner"
            ),
            {"age": max_age_s},
        )
    ).fetchall()
    holders: dict[str, list[Holder]] = {}
    fetching: dict[str, list[str]] = {}
    for row in rows:
        if row.state == "ok":
            fetching.setdefault(row.source, []).append(row.owner)
        elif (holder := Holder.from_row(row)) is not None:
            holders.setdefault(row.source, []).append(holder)
    return [SourceHold(name, held, fetching.get(name, [])) for name, held in holders.items()]


def hold_lines(details: dict[str, Any]) -> list[str]:
    """Lines for the plain ``archiver status`` output: per held source, what, why and since when."""
    held: dict[str, dict[str, Any]] = details.get("held_sources") or {}
    if not held:
        return []
    from archiver.health import format_duration  # health imports the queue, which imports this

    lines = ["held sources (their IDs stay pending, no attempt spent):"]
    for name, h in held.items():
        what = WHAT.get(h["kind"] or "", f"worker {h['state']}")
        pending = "" if h["pending"] is None else f"; {h['pending']:,} pending"
        lines.append(f"  {name}: {what} since {h['since']} ({format_duration(h['held_for_s'])} ago){pending}")
        if h["next_probe_in_s"] is not None:
            due = "overdue" if h["stale"] else "now"  # a dead worker's probe never comes
            probe = due if h["next_probe_in_s"] <= 0 else f"in {format_duration(h['next_probe_in_s'])}"
            lines.append(f"    next probe {probe} ({h['next_probe_at']})")
        else:
            lines.append("    no probe: a run --once stopped fetching it; the next run tries again")
        if h["reason"]:
            lines.append(f"    {h['reason']}")
        if h["last_error"]:
            lines.append(f"    last error: {h['last_error']}")
        owners = ", ".join(w["owner"] for w in h["holders"])
        stale = " (stale: is that worker still running?)" if h["stale"] else ""
        lines.append(f"    held by {owners}, reported {format_duration(h['reported_age_s'])} ago{stale}")
        if h["fetching"]:
            lines.append(f"    still fetching it: {', '.join(h['fetching'])}")
    return lines
