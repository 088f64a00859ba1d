"""Soak: 20,000 IDs, about 10% faults, the archiver SIGKILLed twice and restarted.

Marked slow: `make test` (and so `.ci/run`) runs it; `make test-fast` leaves it out.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from archiver.codec import Codec
from archiver.mockapi import body_for

from .conftest import base_env, start_mock_process

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

TOTAL = 20_000
SCENARIOS = ("flaky2", "reset1", "trunc1", "notfound1", "pending2", "ratelimit1")


def soak_ids() -> list[str]:
    ids = [f"resp_soak{i:05d}_x" for i in range(TOTAL - 1_200)]
    for name in SCENARIOS:
        ids += [f"resp_{name}_soak{i:04d}" for i in range(200)]
    return ids


def archived_count(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        return int(conn.execute("SELECT count(*) FROM archive_queue WHERE state = 'archived'").fetchone()[0])


def test_soak_with_two_sigkills(tmp_path: Path) -> None:
    started = time.monotonic()
    db = tmp_path / "soak.db"
    gen = start_mock_process(tmp_path, "--latency-ms", "3", "--fail-rate", "0.1", "--retry-after", "0.05")
    base_url = next(gen)
    try:
        env = {
            **base_env(),
            "ARCHIVER_DATABASE_URL": f"sqlite:///{db}",
            "ARCHIVER_BASE_URL": base_url,
            "ARCHIVER_LEASE_SECONDS": "3",
            "ARCHIVER_MAX_ATTEMPTS": "25",
            "ARCHIVER_BACKOFF_BASE": "0.02",
            "ARCHIVER_BACKOFF_CAP": "0.5",
            "ARCHIVER_NOT_FOUND_RECHECK": "0.1",
            "ARCHIVER_REPOLL": "0.05",
            "ARCHIVER_POLL_INTERVAL": "0.2",
            "ARCHIVER_MAX_SERVER_WAIT": "1",
            "ARCHIVER_CONCURRENCY": "32",
            "ARCHIVER_BATCH_SIZE": "200",
        }
        ids = soak_ids()
        (tmp_path / "ids.txt").write_text("\n".join(ids) + "\n")
        enq = subprocess.run(
            [sys.executable, "-m", "archiver", "enqueue", "ids.txt"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            timeout=300,
            check=False,
        )
        assert enq.returncode == 0, enq.stderr
        kills = 0
        for kill_at in (TOTAL // 4, TOTAL // 2 + TOTAL // 10):
            proc = subprocess.Popen(
                [sys.executable, "-m", "archiver", "run", "--once"],
                env=env,
                cwd=tmp_path,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 400
            while archived_count(db) < kill_at:
                assert proc.poll() is None, "run ended before it could be killed"
                assert time.monotonic() < deadline, "soak made no progress"
                time.sleep(0.2)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            kills += 1
        final = subprocess.run(
            [sys.executable, "-m", "archiver", "run", "--once"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            timeout=600,
            check=False,
        )
        assert final.returncode == 0, final.stderr[-2000:]
        with urllib.request.urlopen(base_url.removesuffix("/v1") + "/_mock/stats") as resp:  # noqa: S310 - loopback
            stats = json.load(resp)
    finally:
        gen.close()

    with sqlite3.connect(db) as conn:
        states = dict(conn.execute("SELECT state, count(*) FROM archive_queue GROUP BY state").fetchall())
        assert states == {"archived": TOTAL}, states
        assert conn.execute("SELECT count(*) FROM responses").fetchone()[0] == TOTAL
        max_attempts = conn.execute("SELECT max(attempts) FROM archive_queue").fetchone()[0]
        assert max_attempts <= 25
        # Byte-exact for a sample across every kind of ID.
        for rid in ids[::97]:
            stored = conn.execute(
                "SELECT raw, raw_codec, raw_dict_id FROM responses WHERE id = ?", (rid,)
            ).fetchone()
            raw = Codec(dict(conn.execute("SELECT id, data FROM archive_dictionaries"))).decode(*stored)
            assert raw == body_for(rid, fetch_number=stats["requests_by_id"][rid]), rid
    per_id = stats["requests_total"] / TOTAL
    print(
        f"\nsoak: {TOTAL} IDs, {kills} SIGKILLs, {stats['requests_total']} requests "
        f"({per_id:.2f}/ID), status counts {stats['status_counts']}, dropped {stats.get('dropped_total')}, "
        f"wall {time.monotonic() - started:.1f}s"
    )
    assert kills == 2
