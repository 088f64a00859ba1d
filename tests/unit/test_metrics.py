"""Metrics: each domain method moves the right series, in a registry of its own.

Outcomes come from the real classifiers in archiver.policy, so a change in how the
policy words or shapes an outcome shows up here as a wrong label.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

import archiver
from archiver.metrics import (
    FETCH_OUTCOMES,
    REQUEST_DURATION_BUCKETS,
    RETRY_REASONS,
    Metrics,
    fetch_outcome_label,
    retry_reason_label,
)
from archiver.outcomes import Archived, Outcome, Permanent, Retry, StopAll
from archiver.policy import RetryPolicy, classify_exception, classify_response
from archiver.queue import QUEUE_STATES
from archiver.store import WriteReport

POLICY = RetryPolicy(max_attempts=5)
RID = "resp_0123456789abcdef"


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def response(
    status_code: int,
    body: Any = None,
    *,
    attempt: int = 1,
    previous: int | None = None,
    headers: dict[str, str] | None = None,
    profile: Any = "openai",
) -> Outcome:
    raw = body if isinstance(body, bytes) else orjson.dumps(body if body is not None else {})
    return classify_response(
        status_code=status_code,
        headers=headers or {},
        body=raw,
        requested_id=RID,
        attempt=attempt,
        previous_status_code=previous,
        policy=POLICY,
        profile=profile,
        now=1_700_000_000.0,
        rand=0.5,
    )


def failure(exc: Exception, *, attempt: int = 1) -> Outcome:
    return classify_exception(exc, attempt=attempt, policy=POLICY, rand=0.5)


def error_body(code: str, message: str = "nope") -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "type": code}}


@dataclass(frozen=True)
class Case:
    outcome: Outcome | None
    label: str
    status: str
    reason: str | None = None  # retry reason, when a retry
    throttled: bool = False


CASES: dict[str, Case] = {
    "completed": Case(response(200, {"id": RID, "status": "completed"}), "archived", "200"),
    "in_progress_snapshot": Case(response(200, {"id": RID, "status": "in_progress"}), "repoll", "200"),
    "queued_snapshot": Case(response(200, {"id": RID, "status": "queued"}), "repoll", "200"),
    "truncated_body": Case(response(200, b'{"id": "resp_01'), "retry", "200", "bad_body"),
    "other_id": Case(response(200, {"id": "resp_other", "status": "completed"}), "retry", "200", "bad_body"),
    "first_404": Case(response(404, error_body("not_found")), "retry", "404", "not_found_recheck"),
    "second_404": Case(response(404, error_body("not_found"), previous=404), "not_found", "404"),
    "429": Case(
        response(429, error_body("rate_limit_exceeded"), headers={"retry-after": "2"}),
        "retry",
        "429",
        "throttled",
        throttled=True,
    ),
    "dashscope_quota_429": Case(
        response(429, error_body("insufficient_quota"), profile="dashscope"),
        "retry",
        "429",
        "throttled",
        throttled=True,
    ),
    "429_out_of_attempts": Case(
        response(429, error_body("rate_limit_exceeded"), attempt=5), "failed", "429", throttled=True
    ),
    "500": Case(response(500, error_body("internal_error")), "retry", "500", "server_error"),
    "503": Case(response(503, b"<html>Service Unavailable</html>"), "retry", "503", "server_error"),
    "408": Case(response(408, b""), "retry", "408", "timeout"),
    "409": Case(response(409, error_body("conflict")), "retry", "409", "other"),
    "400": Case(response(400, error_body("invalid_request_error")), "failed", "400"),
    "401": Case(response(401, error_body("invalid_api_key")), "stop", "401"),
    "billing": Case(response(400, error_body("Arrearage")), "stop", "400"),
    "timeout": Case(failure(TimeoutError()), "retry", "none", "timeout"),
    "aiohttp_timeout": Case(
        failure(aiohttp.ConnectionTimeoutError("connect timed out")), "retry", "none", "timeout"
    ),
    "connection_reset": Case(failure(ConnectionResetError(104, "reset")), "retry", "none", "connection"),
    "server_disconnected": Case(failure(aiohttp.ServerDisconnectedError()), "retry", "none", "connection"),
    "odd_exception": Case(failure(ValueError("odd")), "retry", "none", "other"),
    "exception_out_of_attempts": Case(failure(TimeoutError(), attempt=5), "failed", "none"),
    "no_outcome": Case(None, "stop", "none"),
}


def test_cases_use_the_outcome_types_they_claim() -> None:
    # Guard against a policy change silently turning a case into something else.
    kinds: dict[str, set[type]] = {label: set() for label in FETCH_OUTCOMES}
    for case in CASES.values():
        if case.outcome is not None:
            kinds[case.label].add(type(case.outcome))
    assert kinds["archived"] == {Archived} and kinds["repoll"] == {Archived}
    assert kinds["retry"] == {Retry}
    assert kinds["not_found"] == kinds["failed"] == {Permanent}
    assert kinds["stop"] == {StopAll}
    assert {c.reason for c in CASES.values() if c.reason} == set(RETRY_REASONS)


@pytest.mark.parametrize("name", list(CASES))
def test_observe_fetch_counts_outcome_status_reason_and_throttle(name: str) -> None:
    case = CASES[name]
    m = Metrics()
    m.observe_fetch(case.outcome, None, 0.2)
    m.observe_fetch(case.outcome, None, 0.3)

    assert value(m, "archiver_fetches_total", outcome=case.label, status_code=case.status) == 2
    for reason in RETRY_REASONS:
        expected = 2 if reason == case.reason else 0
        assert value(m, "archiver_retries_total", reason=reason) == expected, reason
    assert value(m, "archiver_throttled_total") == (2 if case.throttled else 0)
    assert value(m, "archiver_request_duration_seconds_count") == 2
    assert value(m, "archiver_request_duration_seconds_sum") == pytest.approx(0.5)
    assert fetch_outcome_label(case.outcome) == case.label
    if isinstance(case.outcome, Retry):
        assert retry_reason_label(case.outcome) == case.reason


def test_explicit_status_code_wins_and_transport_errors_are_none() -> None:
    m = Metrics()
    stop = StopAll("the provider rejected the API key")  # no status on the record
    m.observe_fetch(stop, 403, 0.01)
    m.observe_fetch(None, None, 0.01)
    assert value(m, "archiver_fetches_total", outcome="stop", status_code="403") == 1
    assert value(m, "archiver_fetches_total", outcome="stop", status_code="none") == 1


def test_a_429_that_stops_the_run_is_not_a_throttle() -> None:
    m = Metrics()
    m.observe_fetch(response(429, error_body("Arrearage")), None, 0.05)
    assert value(m, "archiver_fetches_total", outcome="stop", status_code="429") == 1
    assert value(m, "archiver_throttled_total") == 0


def test_request_duration_buckets_span_10ms_to_120s() -> None:
    assert REQUEST_DURATION_BUCKETS[0] == 0.01 and REQUEST_DURATION_BUCKETS[-1] == 120.0
    assert list(REQUEST_DURATION_BUCKETS) == sorted(REQUEST_DURATION_BUCKETS)
    m = Metrics()
    ok = response(200, {"id": RID, "status": "completed"})
    for seconds in (0.004, 0.3, 45.0, 500.0, -1.0):  # a clock step back counts as 0
        m.observe_fetch(ok, None, seconds)
    bucket = "archiver_request_duration_seconds_bucket"
    assert value(m, bucket, le="0.01") == 2
    assert value(m, bucket, le="0.5") == 3
    assert value(m, bucket, le="60.0") == 4
    assert value(m, bucket, le="120.0") == 4
    assert value(m, bucket, le="+Inf") == 5
    assert value(m, "archiver_request_duration_seconds_sum") == pytest.approx(545.304)


def test_requests_in_flight_follow_start_and_finish() -> None:
    m = Metrics()
    m.request_started()
    m.request_started()
    assert value(m, "archiver_requests_in_flight") == 2
    m.request_finished()
    assert value(m, "archiver_requests_in_flight") == 1
    with pytest.raises(RuntimeError), m.track_request():
        assert value(m, "archiver_requests_in_flight") == 2
        raise RuntimeError("fetch blew up")
    assert value(m, "archiver_requests_in_flight") == 1


def test_set_concurrency() -> None:
    m = Metrics()
    m.set_concurrency(16, 16)
    m.set_concurrency(8, 16)
    assert value(m, "archiver_concurrency_limit") == 8
    assert value(m, "archiver_concurrency_max") == 16


def test_observe_batch_counts_batches_rows_and_lost_leases_and_stamps_time() -> None:
    clock = FakeClock()
    m = Metrics(clock=clock)
    assert value(m, "archiver_last_batch_timestamp_seconds") == 0
    m.observe_batch(WriteReport(archived=3, rows_written=12))
    clock.now += 5
    m.observe_batch(WriteReport(archived=1, failed=1, lost_lease=2, rows_written=4, lost_ids=["a", "b"]))
    assert value(m, "archiver_batches_written_total") == 2
    assert value(m, "archiver_rows_written_total") == 16
    assert value(m, "archiver_lost_leases_total") == 2
    assert value(m, "archiver_last_batch_timestamp_seconds") == clock.now


def test_queue_gauges_start_at_zero_for_every_state() -> None:
    m = Metrics()
    for state in QUEUE_STATES:
        assert value(m, "archiver_queue_rows", state=state) == 0
    assert value(m, "archiver_oldest_pending_age_seconds") == 0
    assert value(m, "archiver_pending_near_expiry") == 0


def test_set_queue_sets_every_state_age_and_near_expiry() -> None:
    clock = FakeClock()
    m = Metrics(clock=clock)
    m.set_queue({"pending": 7, "in_flight": 2, "archived": 40}, 3600.5, 3)
    assert {s: value(m, "archiver_queue_rows", state=s) for s in QUEUE_STATES} == {
        "pending": 7,
        "in_flight": 2,
        "archived": 40,
        "not_found": 0,
        "failed": 0,
    }
    assert value(m, "archiver_oldest_pending_age_seconds") == 3600.5
    assert value(m, "archiver_pending_near_expiry") == 3
    assert value(m, "archiver_queue_refresh_timestamp_seconds") == clock.now

    # Nothing pending: age 0; near_expiry not given: the gauge keeps its value.
    m.set_queue({"archived": 49}, None)
    assert value(m, "archiver_queue_rows", state="pending") == 0
    assert value(m, "archiver_oldest_pending_age_seconds") == 0
    assert value(m, "archiver_pending_near_expiry") == 3
    m.set_pending_near_expiry(0)
    assert value(m, "archiver_pending_near_expiry") == 0


def test_an_unexpected_state_is_shown_then_zeroed_when_gone() -> None:
    m = Metrics()
    m.set_queue({"pending": 1, "paused": 4}, 1.0)
    assert value(m, "archiver_queue_rows", state="paused") == 4
    m.set_queue({"pending": 1}, 1.0)
    assert value(m, "archiver_queue_rows", state="paused") == 0


def test_refresh_failures_are_counted() -> None:
    m = Metrics()
    m.observe_queue_refresh_failure()
    assert value(m, "archiver_queue_refresh_failures_total") == 1


def test_build_info_names_version_and_python() -> None:
    m = Metrics()
    assert (
        value(m, "archiver_build_info", version=archiver.__version__, python=platform.python_version()) == 1
    )


EXPECTED_FAMILIES = {
    "archiver_fetches": "counter",
    "archiver_retries": "counter",
    "archiver_throttled": "counter",
    "archiver_requests_in_flight": "gauge",
    "archiver_concurrency_limit": "gauge",
    "archiver_concurrency_max": "gauge",
    "archiver_queue_rows": "gauge",
    "archiver_oldest_pending_age_seconds": "gauge",
    "archiver_pending_near_expiry": "gauge",
    "archiver_queue_refresh_timestamp_seconds": "gauge",
    "archiver_queue_refresh_failures": "counter",
    "archiver_request_duration_seconds": "histogram",
    "archiver_rows_written": "counter",
    "archiver_batches_written": "counter",
    "archiver_lost_leases": "counter",
    "archiver_build_info": "gauge",
    "archiver_last_batch_timestamp_seconds": "gauge",
    "archiver_endpoint_up": "gauge",
    "archiver_source_up": "gauge",
    "archiver_source_held": "gauge",
    "archiver_breaker_trips": "counter",
}


def test_render_is_parseable_text_format_with_every_family() -> None:
    m = Metrics()
    m.observe_fetch(response(200, {"id": RID, "status": "completed"}), None, 0.12)
    m.observe_fetch(failure(TimeoutError()), None, 30.0)
    m.set_concurrency(4, 8)
    m.set_queue({"pending": 5}, 12.0, 1)
    m.observe_batch(WriteReport(archived=1, rows_written=6))
    m.set_source_up("default", True)
    families = {f.name: f for f in text_string_to_metric_families(m.render().decode())}
    types = {name: f.type for name, f in families.items() if not name.endswith("_created")}
    assert types == EXPECTED_FAMILIES
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples
    }
    assert samples[("archiver_fetches_total", (("outcome", "archived"), ("status_code", "200")))] == 1
    assert samples[("archiver_fetches_total", (("outcome", "retry"), ("status_code", "none")))] == 1
    assert samples[("archiver_retries_total", (("reason", "timeout"),))] == 1
    assert samples[("archiver_queue_rows", (("state", "pending"),))] == 5
    assert samples[("archiver_rows_written_total", ())] == 6


def test_concurrency_gauges_add_up_the_sources() -> None:
    m = Metrics()
    m.set_concurrency(8, 16, "default")
    m.set_concurrency(2, 4, "proj-a")
    m.set_concurrency(3, 4, "proj-a")
    text = m.render().decode()
    assert "archiver_concurrency_limit 11.0" in text and "archiver_concurrency_max 20.0" in text


def test_endpoint_up_is_one_only_while_every_source_is_up() -> None:
    m = Metrics()
    m.set_source_up("default", True)
    m.set_source_up("proj-a", False)
    text = m.render().decode()
    assert 'archiver_source_up{source="default"} 1.0' in text
    assert 'archiver_source_up{source="proj-a"} 0.0' in text
    assert "archiver_endpoint_up 0.0" in text
    m.set_source_up("proj-a", True)
    assert "archiver_endpoint_up 1.0" in m.render().decode()


def test_source_held_names_the_current_kind_only() -> None:
    m = Metrics()
    m.set_source_held("default", "connect")
    m.set_source_held("default", "plain_404")  # a later trip of another kind
    m.set_source_held("proj-a", "billing")
    assert value(m, "archiver_source_held", source="default", kind="connect") == 0
    assert value(m, "archiver_source_held", source="default", kind="plain_404") == 1
    m.set_source_held("default", None)  # recovered
    assert value(m, "archiver_source_held", source="default", kind="plain_404") == 0
    assert value(m, "archiver_source_held", source="proj-a", kind="billing") == 1


def test_two_instances_share_nothing_and_leave_the_global_registry_alone() -> None:
    a, b = Metrics(), Metrics()
    a.observe_fetch(response(500, error_body("internal_error")), None, 1.0)
    a.request_started()
    a.set_queue({"pending": 9}, 5.0, 2)
    a.observe_batch(WriteReport(rows_written=3))
    assert value(a, "archiver_fetches_total", outcome="retry", status_code="500") == 1
    assert value(b, "archiver_fetches_total", outcome="retry", status_code="500") is None
    assert value(b, "archiver_retries_total", reason="server_error") == 0
    assert value(b, "archiver_requests_in_flight") == 0
    assert value(b, "archiver_queue_rows", state="pending") == 0
    assert value(b, "archiver_pending_near_expiry") == 0
    assert value(b, "archiver_rows_written_total") == 0
    assert a.registry is not b.registry
    assert prometheus_client.REGISTRY.get_sample_value("archiver_rows_written_total") is None
    assert b"archiver_" not in prometheus_client.generate_latest(prometheus_client.REGISTRY)
