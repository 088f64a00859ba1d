"""Shared fixtures: the corpus, a throwaway PostgreSQL cluster, per-test databases, the mock API.

PostgreSQL: the fixtures start a real server from Debian's ``postgresql`` package (as the
``postgres`` user when running as root) on loopback, once per session. Under pytest-xdist
(``make test`` runs ``-n``) the session is per worker: each worker starts its own server
(own data folder, own port), so a test that restarts the server never disturbs another
worker's tests. Set ``ARCHIVER_TEST_PG_URL`` to use a server of your own instead (every
test gets a database of its own there too). When ``CI=true`` a missing server is an
error, never a skip, and a run in which any PostgreSQL test was skipped fails.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from archiver.mockapi import MockConfig, MockServer, start_mock_server
from archiver.settings import Settings
from tests.pgserver import PgCluster, pg_bindir

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CORPUS_DIR = SHARED / "corpus" / "responses"

IN_CI = os.environ.get("CI", "").lower() == "true"


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    """The recorded Response bodies in ../shared (CI has them beside the clone)."""
    if not CORPUS_DIR.is_dir():
        if IN_CI:
            pytest.fail(f"corpus not found at {CORPUS_DIR}")
        pytest.skip(f"corpus not found at {CORPUS_DIR}")
    return CORPUS_DIR


# --- PostgreSQL ---------------------------------------------------------------------------


def server_binaries() -> Path:
    """The PostgreSQL server binaries, for a test that starts a server of its own (skips
    locally, fails in CI, when there are none)."""
    bindir = pg_bindir()
    if bindir is None:
        message = "no PostgreSQL server binaries (apt-get install postgresql, or set ARCHIVER_TEST_PG_URL)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return bindir


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """A PostgreSQL server per session, so per xdist worker (skips locally, fails in CI, if none runs)."""
    external = os.environ.get("ARCHIVER_TEST_PG_URL")
    if external:
        yield PgCluster(host="", port=0, user="", external_url=external)
        return
    cluster = PgCluster.create(server_binaries())
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    pg_cluster.psql(f"CREATE DATABASE {name}")
    try:
        yield pg_cluster.admin_url(name)
    finally:
        for _ in range(5):
            try:
                pg_cluster.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
                break
            except RuntimeError:
                time.sleep(0.5)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database URL: each test using it runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'archive.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite database URL."""
    return f"sqlite:///{tmp_path / 'archive.db'}"


# --- mock API and settings -------------------------------------------------------------------


@pytest.fixture
async def mock_api() -> AsyncIterator[MockServer]:
    """The project's mock Responses API on a free loopback port."""
    async with await start_mock_server(MockConfig()) as server:
        yield server


@pytest.fixture
def make_settings() -> Any:
    """Factory: Settings tuned for fast tests (tiny backoffs, quick polls)."""

    def make(database_url: str, base_url: str = "http://127.0.0.1:9/v1", **changes: Any) -> Settings:
        fast: dict[str, Any] = {
            "database_url": database_url,
            "base_url": base_url,
            "concurrency": 8,
            "backoff_base": 0.01,
            "backoff_cap": 0.05,
            "not_found_recheck": 0.05,
            "repoll": 0.02,
            "poll_interval": 0.05,
            "grace_seconds": 5.0,
            "drain_horizon": 5.0,
            "request_timeout": 5.0,
            "max_server_wait": 2.0,
        }
        fast.update(changes)
        return Settings(**fast)

    return make


def run_async(coro: Any) -> Any:
    """Run a coroutine from sync code (for subprocess-style tests)."""
    return asyncio.run(coro)


# --- say in the output how many PostgreSQL tests ran (CI must show they were not skipped) ---

_pg_outcomes: dict[str, int] = {"passed": 0, "failed": 0, "skipped": 0, "xfailed": 0}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses the PostgreSQL fixtures, however it gets them."""
    for item in items:
        names = getattr(item, "fixturenames", ())
        if "pg_url" in names or "pg_cluster" in names:
            item.add_marker(pytest.mark.postgres)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Count the outcomes of tests marked `postgres` (or using the PostgreSQL fixtures).

    Under xdist the controller gets every worker's reports through this hook too, so its
    counts (the ones printed and checked below) cover the whole run.
    """
    uses_pg = "postgres" in report.keywords
    if not uses_pg:
        return
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        # An expected failure ran against the server (pytest reports it as skipped): a
        # known bug recorded by a strict xfail, not a test that did not run.
        outcome = "xfailed" if report.outcome == "skipped" and hasattr(report, "wasxfail") else report.outcome
        _pg_outcomes[outcome] = _pg_outcomes.get(outcome, 0) + 1


def pytest_sessionfinish(session: pytest.Session) -> None:
    """With ``CI=true``, a skipped PostgreSQL test fails the run (they must run in CI)."""
    if hasattr(session.config, "workerinput"):  # an xdist worker: the controller decides
        return
    if IN_CI and _pg_outcomes["skipped"] and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """One line saying how many tests ran against the real PostgreSQL server."""
    counts = _pg_outcomes
    total = sum(counts.values())
    terminalreporter.write_line(
        f"PostgreSQL tests run against a real server: {total} "
        f"(passed={counts['passed']}, failed={counts['failed']}, skipped={counts['skipped']}, "
        f"xfailed={counts['xfailed']})"
    )
    if IN_CI and counts["skipped"]:
        terminalreporter.write_line("CI=true: PostgreSQL tests were skipped, so this run fails", red=True)
