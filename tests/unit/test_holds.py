"""A source held by several workers of a fleet shows once (archiver/holds.py)."""

from __future__ import annotations

from typing import get_args

from archiver.breaker import Kind, Trip
from archiver.holds import HOLD_KINDS, WHAT, Hold, Holder, SourceHold, hold_kind, hold_lines, utc_text


def holder(owner: str, *, since: float, probe_at: float | None, age: float, kind: str = "connect") -> Holder:
    now = 1_800_000_000.0
    return Holder(
        owner=owner,
        state="paused",
        kind=kind,
        reason=f"{owner} cannot connect",
        error=f"{owner}: connection refused",
        endpoint="https://api.example.test/v1/responses/…",
        since=since,
        held_for_s=now - since,
        next_probe_at=probe_at,
        next_probe_in_s=None if probe_at is None else max(probe_at - now, 0.0),
        reported_age_s=age,
    )


def test_the_earliest_hold_the_soonest_probe_and_the_freshest_report() -> None:
    now = 1_800_000_000.0
    early = holder("host-a:1", since=now - 600, probe_at=now + 200, age=50)
    fresh = holder("host-b:2", since=now - 60, probe_at=now + 20, age=3, kind="5xx")
    shown = SourceHold("default", [early, fresh], ["host-c:3"]).as_dict(pending=42)
    assert shown["since"] == utc_text(now - 600) and shown["held_for_s"] == 600
    assert shown["next_probe_at"] == utc_text(now + 20) and shown["next_probe_in_s"] == 20
    assert shown["kind"] == "5xx" and shown["last_error"] == "host-b:2: connection refused"
    assert shown["reported_age_s"] == 3 and shown["stale"] is False
    assert [h["owner"] for h in shown["holders"]] == ["host-a:1", "host-b:2"]
    assert shown["fetching"] == ["host-c:3"] and shown["pending"] == 42
    lines = hold_lines({"held_sources": {"default": shown}})
    assert lines[0] == "held sources (their IDs stay pending, no attempt spent):"
    assert "held by host-a:1, host-b:2, reported 3s ago" in "\n".join(lines)
    assert lines[-1] == "    still fetching it: host-c:3"
    assert hold_lines({"held_sources": {}}) == [] and hold_lines({}) == []


def test_a_hold_with_no_probe_scheduled_says_none() -> None:
    shown = SourceHold("default", [holder("h:1", since=1.0, probe_at=None, age=1)], []).as_dict()
    assert shown["next_probe_at"] is None and shown["next_probe_in_s"] is None
    assert not any("next probe" in line for line in hold_lines({"held_sources": {"x": shown}}))


def test_what_a_trip_holds_for() -> None:
    assert hold_kind(Trip("plain_404", "r")) == "plain_404"
    assert hold_kind(Trip("refused", "r")) == "refused"
    assert hold_kind(Trip("refused", "r", probe=False)) == "billing"
    # The newest failed probe's answer is the last error; else the trip's sample.
    assert Hold.of_trip(Trip("connect", "r", error="sample"), "probe said no", 3.0).error == "probe said no"
    assert Hold.of_trip(Trip("connect", "r", error="sample"), None, 3.0).error == "sample"
    assert Hold.of_trip(Trip("connect", "r"), None, None).error is None


def test_every_kind_the_breaker_knows_has_words() -> None:
    assert set(get_args(Kind)) | {"billing"} == set(HOLD_KINDS) == set(WHAT)
