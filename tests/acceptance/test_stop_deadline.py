"""A stop signal ends ``archiver run`` within its stated bound while the database fails.

The daemon talks to PostgreSQL through a proxy the test cuts (the server gone: connections
reset and refused; or out of reach: every packet dropped) while requests are in flight,
then gets SIGTERM. It must exit within ``--grace-seconds`` + ``--final-write-seconds``
(plus the interpreter's start and end), with one line saying what it left, no traceback,
and the writer process gone too. Once the database is back and the leases expire, a
second run archives every ID with the server's bytes.
"""

from __future__ import annotations

import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.pgserver import PgCluster
from tests.tcpproxy import TcpProxy, tcp_proxy

from .conftest import Cli, base_env, children_of, is_running, start_mock_process
from .test_crash import (
    FAST,
    check_invariant,
    enqueue,
    read_queue,
    requests_for,
    run_once,
    spawn,
    stop_for_good,
    wait_for_leases_to_expire,
    wait_until,
)

pytestmark = pytest.mark.timeout(180)

GRACE_S = 1.0
FINAL_WRITE_S = 2.0
SLACK_S = 1.5
"""The interpreter's own exit, and a loaded machine (the bound counts from the signal)."""


@pytest.fixture(scope="module")
def mock_500ms(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from start_mock_process(tmp_path_factory.mktemp("mock500"), "--latency-ms", "500")


@pytest.fixture(scope="module")
def mock_now(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from start_mock_process(tmp_path_factory.mktemp("mock0"), "--latency-ms", "0")


@pytest.fixture
def proxied(pg_cluster: PgCluster, pg_url: str) -> Iterator[tuple[str, TcpProxy]]:
    """(the test database's URL through a proxy, the proxy)."""
    url = make_url(pg_url)
    assert url.host is not None and url.port is not None
    with tcp_proxy(url.host, url.port) as proxy:
        yield url.set(port=proxy.port).render_as_string(hide_password=False), proxy


def archived(db_url: str) -> int:
    return sum(r.state == "archived" for r in read_queue(db_url).values())


def served_body(base_url: str, response_id: str) -> bytes:
    # The mock process on loopback: always an http:// URL the fixture built.
    with urllib.request.urlopen(f"{base_url}/responses/{response_id}", timeout=10) as answer:  # noqa: S310
        return bytes(answer.read())


@pytest.mark.parametrize("fault", ["refuse", "blackhole"])
def test_sigterm_with_postgresql_gone_exits_within_the_bound(
    fault: str,
    proxied: tuple[str, TcpProxy],
    pg_url: str,
    mock_500ms: str,
    mock_now: str,
    tmp_path: Path,
) -> None:
    through_proxy, proxy = proxied
    direct = Cli({**base_env(), "ARCHIVER_DATABASE_URL": pg_url}, tmp_path)
    ids = [f"resp_ok_stopbound_{fault}_{i}" for i in range(40)]
    enqueue(direct, ids)
    env = {
        **FAST,
        "ARCHIVER_DATABASE_URL": through_proxy,
        "ARCHIVER_BASE_URL": mock_500ms,
        "ARCHIVER_LEASE_SECONDS": "3",
        "ARCHIVER_GRACE_SECONDS": str(GRACE_S),
        "ARCHIVER_FINAL_WRITE_SECONDS": str(FINAL_WRITE_S),
        "ARCHIVER_LOG_LEVEL": "info",
    }
    proc = spawn(direct, tmp_path / "daemon", "run", "--concurrency", "8", **env)
    try:
        # The writer process writes (it is connected), and the next requests are in flight.
        wait_until(lambda: archived(pg_url) >= 8, "8 archived", proc=proc)
        children = children_of(proc.pid)
        getattr(proxy, fault)()
        time.sleep(0.2)  # requests in flight now answer into a database that is gone
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        returncode = proc.wait(timeout=150)
        took = time.monotonic() - sent
    finally:
        stop_for_good(proc)
        proxy.restore()
    stderr = (tmp_path / "daemon" / "stderr").read_text()
    print(f"stop took {took:.2f}s, exit {returncode}")
    assert took < GRACE_S + FINAL_WRITE_S + SLACK_S, f"the stop took {took:.1f}s: {stderr[-3000:]}"
    assert "Traceback" not in stderr, stderr[-3000:]
    assert not [pid for pid in children if is_running(pid)], "the writer process outlived the stop"
    assert returncode == 1, stderr[-3000:]
    assert "archiver.stop_left_in_flight" in stderr, stderr[-3000:]

    # Back, and the leases expired: every ID ends archived, with the server's bytes.
    db_rows = read_queue(pg_url)
    assert any(r.state == "in_flight" for r in db_rows.values()), "nothing was left in flight"
    wait_for_leases_to_expire(pg_url)
    summary = run_once(direct, mock_now, ARCHIVER_LEASE_SECONDS="3")
    assert summary["remaining"].get("pending", 0) == 0, summary
    check_invariant(pg_url, ids, requests_for(ids, mock_500ms, mock_now))
    for rid in ids[:3]:
        shown = direct("show", rid)
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout == served_body(mock_now, rid)
