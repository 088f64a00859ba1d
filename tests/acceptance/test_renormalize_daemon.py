"""renormalize and compact beside a running daemon (`archiver run`): nothing lost, rows consistent."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from archiver.archived_bodies import read_bodies
from archiver.db import open_database
from archiver.mockapi import body_for
from archiver.renormalize import renormalize
from tests.acceptance.conftest import Cli, start_daemon, start_mock_process
from tests.integration.test_renormalize import assert_consistent, projection

pytestmark = pytest.mark.timeout(300)

FIRST = (
    [f"resp_ok_r{i:04d}" for i in range(60)]
    + [f"resp_kitchensink_r{i}" for i in range(10)]
    # NUL characters (scrubbed in PostgreSQL's derived columns), heavy Unicode, a 4 MB body.
    + ["resp_nul_r1", "resp_nul_r2", "resp_unicode_r1", "resp_big_r1"]
)
# Re-archived with new bytes on every poll while renormalize runs: the case the fence is for.
PENDING = [f"resp_pending4_r{i:03d}" for i in range(20)]
WAVES = [[f"resp_ok_w{w}_{i:03d}" for i in range(40)] for w in range(3)]
"""Enqueued one before each rebuild command: at 100 ms a request and 2 at a time, the
daemon is still writing them while the command runs, however loaded the machine."""
SECOND = [rid for wave in WAVES for rid in wave]


def _states(cli: Cli) -> dict[str, int]:
    done = cli("status", "--json")
    assert done.returncode == 0, done.stderr
    states: dict[str, int] = json.loads(done.stdout)["states"]
    return states


async def _final_check(db_url: str, ids: list[str]) -> None:
    async with open_database(db_url) as engine:
        async with engine.connect() as conn:
            bodies = await read_bodies(conn, ids)
        expected = {rid: body_for(rid, 99) for rid in ids}
        assert bodies == expected
        await assert_consistent(engine)
        # The rows are exactly the projection of raw: rebuilding them changes nothing.
        rows = await projection(engine)
        await renormalize(engine, everything=True)
        assert await projection(engine) == rows


@pytest.fixture
def slow_mock(tmp_path: Path) -> Iterator[str]:
    """The mock API at 100 ms a request: the daemon is still writing while the rebuilds run."""
    yield from start_mock_process(tmp_path, "--latency-ms", "100")


def test_renormalize_and_compact_beside_a_running_daemon_lose_nothing(
    cli: Cli, db_url: str, slow_mock: str, tmp_path: Path
) -> None:
    env = {
        **cli.env,
        "ARCHIVER_BASE_URL": slow_mock,
        "ARCHIVER_CONCURRENCY": "2",
        "ARCHIVER_POLL_INTERVAL": "0.1",
        "ARCHIVER_REPOLL": "0.3",
        "ARCHIVER_BACKOFF_CAP": "0.5",
        "ARCHIVER_BATCH_SIZE": "20",
    }
    enqueued = cli("enqueue", input="\n".join(FIRST + PENDING).encode(), **env)
    assert enqueued.returncode == 0, enqueued.stderr
    daemon = start_daemon(env, tmp_path)
    try:
        deadline = time.monotonic() + 60
        while _states(cli)["archived"] < len(FIRST) // 2:
            assert time.monotonic() < deadline and daemon.poll() is None
            time.sleep(0.1)
        runs = []
        overlapped = 0
        for wave, command in zip(
            WAVES, (["renormalize", "--all"], ["compact"], ["renormalize", "--since", "1h"]), strict=True
        ):
            assert cli("enqueue", input="\n".join(wave).encode(), **env).returncode == 0
            before = _states(cli)["archived"]
            done = cli(*command, "--batch-size", "15", "--json", **env)
            assert done.returncode == 0, done.stderr.decode()
            runs.append(json.loads(done.stdout))
            overlapped += _states(cli)["archived"] > before  # the daemon wrote meanwhile
        assert all(run["failed"] == 0 for run in runs)
        assert set(runs[1]["orphans_removed"]) == {"tool_sets", "input_items"}  # compact's
        assert sum(run["rewritten"] for run in runs) > len(FIRST) // 2
        assert overlapped >= 2, "the rebuilds did not run beside the daemon's writes"
        deadline = time.monotonic() + 120
        while (states := _states(cli))["archived"] < len(FIRST + PENDING + SECOND):
            assert time.monotonic() < deadline, states
            assert daemon.poll() is None
            time.sleep(0.2)
        assert states["failed"] == states["not_found"] == 0
        # The archive is full: a run asking for summary is refused, one line, exit 2.
        refused = cli("run", "--once", "--normalize", "summary", **env)
        assert refused.returncode == 2
        assert (
            b"renormalize --all --normalize summary" in refused.stderr and b"Traceback" not in refused.stderr
        )
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=60)
    assert daemon.returncode == 0, err.decode()[-2000:]
    asyncio.run(_final_check(db_url, FIRST + PENDING + SECOND))
