"""Fleet-wide max_rps, end to end: three ``archiver run --once`` processes on one source with
``max_rps = 40`` send at most 44 requests in any one-second window, measured at the mock
API (its own process, recording arrival times), and drain 600 IDs within 20 s.

One test per database (SQLite file: processes on one host; PostgreSQL: as across hosts).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from archiver.mockapi import max_in_window
from tests.acceptance.conftest import Cli, start_mock_process

pytestmark = pytest.mark.timeout(180)

IDS = 600
MAX_RPS = 40


def mock_stats(base_url: str) -> dict[str, Any]:
    root = base_url.removesuffix("/v1")
    with urllib.request.urlopen(f"{root}/_mock/stats", timeout=10) as resp:  # noqa: S310 - loopback
        return dict(json.loads(resp.read()))


def test_three_processes_together_keep_the_fleet_ceiling(cli: Cli, tmp_path: Path) -> None:
    mock = start_mock_process(tmp_path, "--latency-ms", "20", "--jitter-ms", "10")
    base_url = next(mock)
    try:
        config = tmp_path / "sources.toml"
        config.write_text(
            f'[sources.default]\nbase_url = "{base_url}"\nmax_rps = {MAX_RPS}\n', encoding="utf-8"
        )
        ids = "".join(f"resp_ok_fleet{i}\n" for i in range(IDS)).encode()
        enqueued = cli("enqueue", input=ids)
        assert enqueued.returncode == 0, enqueued.stderr.decode()
        # Small claims, so all three processes hold rows and send. 40 requests a second need
        # no second core for writing: inline writers spare a 2-core host three more
        # processes starting at once (the clock runs from the first process start).
        env = {
            **cli.env,
            "ARCHIVER_CONFIG": str(config),
            "ARCHIVER_BATCH_SIZE": "20",
            "ARCHIVER_WRITER": "inline",
        }
        cmd = [sys.executable, "-m", "archiver", "run", "--once", "--concurrency", "16"]
        started = time.monotonic()
        procs = [
            subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for _ in range(3)
        ]
        outputs = [p.communicate(timeout=120) for p in procs]
        results = [(p.returncode, out, err) for p, (out, err) in zip(procs, outputs, strict=True)]
        elapsed = time.monotonic() - started
        stats = mock_stats(base_url)
    finally:
        next(mock, None)
    for code, _out, err in results:
        assert code == 0, err.decode()[-2000:]
    shares = [json.loads(out)["archived"] for _, out, _ in results]
    assert sum(shares) == IDS and all(share > 0 for share in shares), shares  # all three sent
    status = json.loads(cli("status", "--json").stdout)
    assert status["states"]["archived"] == IDS
    arrivals = stats["arrivals"]
    assert len(arrivals) == stats["requests_total"] >= IDS
    peak = max_in_window(arrivals, 1.0)
    first, last = min(arrivals) - started, max(arrivals) - started  # one system-wide monotonic clock
    print(
        f"fleet ceiling: peak {peak} requests in one second (max_rps {MAX_RPS}), {IDS} IDs in "
        f"{elapsed:.1f}s (requests from {first:.1f}s to {last:.1f}s)"
    )
    assert peak <= 44, peak
    # The fleet's sending, at the mock's clock: 600 IDs within 20 s (15 s at the ceiling). The processes' own
    # start-up before their first request (interpreter, imports, opening the database) is
    # not the ceiling's doing and grows with the host's load (the suite runs in parallel
    # workers on 2 cores), so it is bounded apart, loosely.
    assert last - first < 20, (first, last)
    assert elapsed < 60, elapsed
