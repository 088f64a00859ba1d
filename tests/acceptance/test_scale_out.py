"""Scale-out: several ``archiver run --once`` processes drain one queue together.

The mock API runs as its own process and counts every request per ID, so "no ID fetched
twice" is checked from the server's side, not from what the workers believe they did.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from tests.acceptance.conftest import Cli, base_env, start_mock_process

pytestmark = pytest.mark.timeout(300)

FORBIDDEN_ON_STDERR = ("deadlock", "serialization", "traceback", "database is locked")


@pytest.fixture
def slow_mock(tmp_path: Path) -> Iterator[str]:
    """The mock API as a separate process, 5 ms per request; yields its base URL."""
    yield from start_mock_process(tmp_path, "--latency-ms", "5")


def mock_stats(base_url: str) -> dict[str, Any]:
    root = base_url.removesuffix("/v1")
    with urllib.request.urlopen(f"{root}/_mock/stats", timeout=10) as resp:  # noqa: S310 - loopback
        return dict(json.loads(resp.read()))


@dataclass
class Finished:
    returncode: int
    stdout: str
    stderr: str


def run_workers_at_once(
    count: int, database_url: str, base_url: str, cwd: Path, *, concurrency: int = 16
) -> tuple[list[Finished], float]:
    """Start ``count`` ``run --once`` processes back to back; wait for all; (results, wall s)."""
    env = {
        **base_env(),
        "ARCHIVER_DATABASE_URL": database_url,
        "ARCHIVER_BASE_URL": base_url,
        "ARCHIVER_LOG_LEVEL": "warning",
        "ARCHIVER_BATCH_SIZE": "50",
    }
    cmd = [sys.executable, "-m", "archiver", "run", "--once", "--concurrency", str(concurrency)]
    started = time.monotonic()
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd)
        for _ in range(count)
    ]
    finished: list[Finished] = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=240)
            finished.append(Finished(proc.returncode, out.decode(), err.decode()))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return finished, time.monotonic() - started


def assert_drained_once_each(finished: list[Finished], cli: Cli, base_url: str, ids: list[str]) -> list[int]:
    """Every process succeeded quietly and took a share; every ID archived and fetched once."""
    for n, result in enumerate(finished):
        assert result.returncode == 0, (n, result.stderr[-3000:])
        lowered = result.stderr.lower()
        seen = [word for word in FORBIDDEN_ON_STDERR if word in lowered]
        assert not seen, (n, seen, result.stderr[-3000:])
    summaries = [json.loads(result.stdout) for result in finished]
    shares = [int(s["archived"]) for s in summaries]
    for summary in summaries:
        assert summary["stop_reason"] is None, summary
        assert summary["failed"] == summary["not_found"] == summary["lost_lease"] == 0, summary
    assert all(share > 0 for share in shares), shares
    assert sum(shares) == len(ids), shares

    status = cli("status", "--json")
    assert status.returncode == 0, status.stderr
    states = json.loads(status.stdout)["states"]
    assert states == {
        "pending": 0,
        "in_flight": 0,
        "archived": len(ids),
        "not_found": 0,
        "failed": 0,
    }

    stats = mock_stats(base_url)
    assert stats["requests_total"] == len(ids), stats["requests_total"]
    by_id = stats["requests_by_id"]
    assert set(by_id) == set(ids)
    twice = {rid: n for rid, n in by_id.items() if n != 1}
    assert not twice, dict(list(twice.items())[:20])
    return shares


def enqueue(cli: Cli, ids: list[str]) -> None:
    out = cli("enqueue", input=("\n".join(ids) + "\n").encode())
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode().strip() == f"queued {len(ids)}, already known 0, rejected 0"


@pytest.mark.postgres
def test_three_processes_share_one_postgres_queue(pg_url: str, slow_mock: str, tmp_path: Path) -> None:
    ids = [f"resp_ok_scale{i:05d}" for i in range(2400)]
    cli = Cli({**base_env(), "ARCHIVER_DATABASE_URL": pg_url}, tmp_path)
    enqueue(cli, ids)

    finished, wall_s = run_workers_at_once(3, pg_url, slow_mock, tmp_path)

    shares = assert_drained_once_each(finished, cli, slow_mock, ids)
    print(f"\n3 processes on PostgreSQL: 2400 IDs in {wall_s:.2f} s wall, archived per process {shares}")


def test_two_processes_share_one_sqlite_file(slow_mock: str, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    ids = [f"resp_ok_lite{i:05d}" for i in range(1500)]
    cli = Cli({**base_env(), "ARCHIVER_DATABASE_URL": url}, tmp_path)
    enqueue(cli, ids)

    finished, wall_s = run_workers_at_once(2, url, slow_mock, tmp_path)

    shares = assert_drained_once_each(finished, cli, slow_mock, ids)
    print(f"\n2 processes on SQLite: 1500 IDs in {wall_s:.2f} s wall, archived per process {shares}")


# --- URL forms ------------------------------------------------------------------------------


@pytest.mark.postgres
def test_postgres_scheme_as_users_write_it(pg_url: str, tmp_path: Path) -> None:
    written = Cli({**base_env(), "ARCHIVER_DATABASE_URL": pg_url}, tmp_path)
    enqueue(written, ["resp_ok_url1", "resp_ok_url2"])

    short_url = "postgres://" + pg_url.split("://", 1)[1]
    assert short_url != pg_url and short_url.startswith("postgres://")
    out = Cli({**base_env(), "ARCHIVER_DATABASE_URL": short_url}, tmp_path)("status", "--json")
    assert out.returncode == 0, out.stderr
    assert b"Traceback" not in out.stderr
    details = json.loads(out.stdout)
    # The same database: it sees the rows queued through the postgresql:// URL.
    assert details["states"]["pending"] == 2
    # Shown as the user wrote it (password hidden), not as the driver URL.
    assert details["database"] == short_url


@pytest.mark.postgres
def test_bare_postgresql_url_uses_libpq_environment(pg_url: str, tmp_path: Path) -> None:
    url = make_url(pg_url)
    assert url.host and url.port and url.username and url.database
    written = Cli({**base_env(), "ARCHIVER_DATABASE_URL": pg_url}, tmp_path)
    enqueue(written, ["resp_ok_env1", "resp_ok_env2", "resp_ok_env3"])

    pg_env = {
        "PGHOST": url.host,
        "PGPORT": str(url.port),
        "PGUSER": url.username,
        **({"PGPASSWORD": url.password} if url.password else {}),
    }
    bare = Cli({**base_env(), **pg_env, "ARCHIVER_DATABASE_URL": f"postgresql:///{url.database}"}, tmp_path)
    out = bare("status", "--json")
    assert out.returncode == 0, out.stderr
    assert b"Traceback" not in out.stderr
    assert json.loads(out.stdout)["states"]["pending"] == 3

    # And it writes there too: a fourth ID queued through the bare URL shows up via the full one.
    more = bare("enqueue", input=b"resp_ok_env4\n")
    assert more.returncode == 0, more.stderr
    check = written("status", "--json")
    assert json.loads(check.stdout)["states"]["pending"] == 4
