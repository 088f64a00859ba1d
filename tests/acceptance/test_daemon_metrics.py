"""The daemon as an operator sees it: /metrics and /healthz on loopback, SIGTERM exits 0."""

from __future__ import annotations

import json
import signal
import socket
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import Cli, start_daemon

pytestmark = pytest.mark.timeout(120)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - loopback only
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_daemon_serves_metrics_and_stops_on_sigterm(
    sqlite_cli: Cli, mock_process: str, tmp_path: Path
) -> None:
    ids = [f"resp_ok_m{i:03d}" for i in range(50)] + ["resp_notfound_m1"]
    assert sqlite_cli("enqueue", input="\n".join(ids).encode()).returncode == 0
    port = _free_port()
    env = {
        **sqlite_cli.env,
        "ARCHIVER_BASE_URL": mock_process,
        "ARCHIVER_METRICS_PORT": str(port),
        "ARCHIVER_POLL_INTERVAL": "0.1",
        "ARCHIVER_NOT_FOUND_RECHECK": "0.05",
        "ARCHIVER_BACKOFF_BASE": "0.01",
        "ARCHIVER_METRICS_REFRESH": "0.5",
        "ARCHIVER_LOG_LEVEL": "info",
    }
    proc = start_daemon(env, tmp_path)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        samples: dict = {}
        while time.monotonic() < deadline:
            try:
                _status, body = _get(base + "/metrics")
            except OSError:
                time.sleep(0.1)
                continue
            samples = _samples(body)
            archived = samples.get(
                ("archiver_fetches_total", (("outcome", "archived"), ("status_code", "200"))), 0
            )
            rows = samples.get(("archiver_queue_rows", (("state", "archived"),)), 0)
            if archived >= 50 and rows >= 50:
                break
            time.sleep(0.2)
        assert samples[("archiver_fetches_total", (("outcome", "archived"), ("status_code", "200")))] == 50
        assert samples[("archiver_fetches_total", (("outcome", "not_found"), ("status_code", "404")))] == 1
        assert samples[("archiver_queue_rows", (("state", "archived"),))] == 50
        assert samples[("archiver_concurrency_limit", ())] >= 1
        assert ("archiver_build_info", ()) not in samples  # labelled series only
        assert _get(base + "/healthz") == (200, "ok\n")
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert b"archiver.run_stopped" in err and b"SIGTERM" in err


def test_daemon_with_a_wrong_base_url_pauses_and_says_so(
    sqlite_cli: Cli, mock_process: str, tmp_path: Path
) -> None:
    """A base URL without /v1: the daemon does not burn the queue; /healthz, check and status say why."""
    ids = [f"resp_ok_w{i:03d}" for i in range(20)]
    assert sqlite_cli("enqueue", input="\n".join(ids).encode()).returncode == 0
    port = _free_port()
    env = {
        **sqlite_cli.env,
        "ARCHIVER_BASE_URL": mock_process.removesuffix("/v1"),
        "ARCHIVER_METRICS_PORT": str(port),
        "ARCHIVER_POLL_INTERVAL": "0.1",
        "ARCHIVER_BACKOFF_BASE": "0.01",
        "ARCHIVER_LOG_LEVEL": "info",
    }
    proc = start_daemon(env, tmp_path)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        health: tuple[int, str] = (0, "")
        while time.monotonic() < deadline:
            try:
                health = _get(base + "/healthz")
            except OSError:
                health = (0, "")
            if health[0] == 503:
                break
            time.sleep(0.1)
        assert health == (503, "unhealthy\n")
        samples = _samples(_get(base + "/metrics")[1])
        assert samples[("archiver_endpoint_up", ())] == 0
        assert samples[("archiver_breaker_trips_total", ())] >= 1
        check = sqlite_cli("check")
        while b"paused" not in check.stderr and time.monotonic() < deadline:
            time.sleep(0.1)
            check = sqlite_cli("check")
        assert check.returncode == 1
        assert b"paused" in check.stderr and b"plain 404" in check.stderr, check.stderr
        status = sqlite_cli("status")
        assert b"paused" in status.stdout, status.stdout
        assert b"  default: endpoint paused (plain 404s, not the provider's JSON) since " in status.stdout
        held = json.loads(sqlite_cli("status", "--json").stdout)["held_sources"]["default"]
        assert held["kind"] == "plain_404" and "plain 404" in held["last_error"]
        assert held["next_probe_in_s"] is not None
        samples = _samples(_get(base + "/metrics")[1])
        assert samples[("archiver_source_held", (("kind", "plain_404"), ("source", "default")))] == 1
        assert proc.poll() is None, "the daemon exited instead of pausing"
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert b"archiver.endpoint_down" in err
    assert b"Traceback" not in err
    details = json.loads(sqlite_cli("status", "--json").stdout)
    assert details["held_sources"] == {}  # a clean exit forgets the hold
    states = details["states"]
    assert states["pending"] == 20, states  # nothing marked not_found or failed
    assert states["not_found"] == states["failed"] == states["in_flight"] == 0
