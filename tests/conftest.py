"""Shared fixtures: the corpus, a throwaway PostgreSQL cluster, per-test databases, the mock API.

PostgreSQL: the fixtures start a real server from Debian's ``postgresql`` package (as the
``postgres`` user when running as root) on loopback, once per session. Set
``ARCHIVER_TEST_PG_URL`` to use a server of your own instead. When ``CI=true`` a missing
server is an error, never a skip.
"""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from archiver.mockapi import MockConfig, MockServer, start_mock_server
from archiver.settings import Settings

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


def _pg_bindir() -> Path | None:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("initdb")
    return Path(found).resolve().parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgCluster:
    """A throwaway PostgreSQL server this test session started (or one given by URL)."""

    host: str
    port: int
    user: str
    bindir: Path | None = None
    datadir: Path | None = None
    as_user: list[str] | None = None
    external_url: str | None = None

    def admin_url(self, database: str = "postgres") -> str:
        if self.external_url:
            base = self.external_url.rsplit("/", 1)[0]
            return f"{base}/{database}"
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    def _ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        assert self.bindir is not None and self.datadir is not None
        cmd = [*(self.as_user or []), str(self.bindir / "pg_ctl"), "-D", str(self.datadir), *args]
        return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=120)

    def start(self) -> None:
        opts = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.datadir} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
        )
        self._ctl("-o", opts, "-l", str(self.datadir / "server.log"), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._ctl("-m", mode, "-w", "stop", check=False)

    def restart(self, mode: str = "fast") -> None:
        """Stop and start the server (for database-fault tests)."""
        self.stop(mode)
        self.start()

    def psql(self, sql: str, database: str = "postgres") -> str:
        psql = str(self.bindir / "psql") if self.bindir else "psql"
        out = subprocess.run(
            [psql, self.admin_url(database), "-v", "ON_ERROR_STOP=1", "-tAc", sql],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if out.returncode != 0:
            raise RuntimeError(f"psql failed: {out.stderr.strip()}")
        return out.stdout.strip()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """A PostgreSQL server for the session (skips locally, fails in CI, when none can run)."""
    external = os.environ.get("ARCHIVER_TEST_PG_URL")
    if external:
        yield PgCluster(host="", port=0, user="", external_url=external)
        return
    bindir = _pg_bindir()
    if bindir is None or not (bindir / "pg_ctl").exists():
        message = "no PostgreSQL server binaries (apt-get install postgresql, or set ARCHIVER_TEST_PG_URL)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    root = Path(tempfile.mkdtemp(prefix="archiver-pg-"))
    datadir = root / "data"
    as_user: list[str] = []
    if os.geteuid() == 0:
        # The server refuses to run as root: run it as the postgres user.
        pw = pwd.getpwnam("postgres")
        os.chmod(root, 0o755)
        datadir.mkdir()
        os.chown(datadir, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [
            *as_user,
            str(bindir / "initdb"),
            "-D",
            str(datadir),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    cluster = PgCluster("127.0.0.1", _free_port(), "postgres", bindir, datadir, as_user)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


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

_pg_outcomes: dict[str, int] = {"passed": 0, "failed": 0, "skipped": 0}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses the PostgreSQL fixtures, however it gets them."""
    for item in items:
        names = getattr(item, "fixturenames", ())
        if "pg_url" in names or "pg_cluster" in names:
            item.add_marker(pytest.mark.postgres)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Count the outcomes of tests marked `postgres` (or using the PostgreSQL fixtures)."""
    uses_pg = "postgres" in report.keywords
    if not uses_pg:
        return
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        _pg_outcomes[report.outcome] = _pg_outcomes.get(report.outcome, 0) + 1


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """One line saying how many tests ran against the real PostgreSQL server."""
    counts = _pg_outcomes
    total = sum(counts.values())
    terminalreporter.write_line(
        f"PostgreSQL tests run against a real server: {total} "
        f"(passed={counts['passed']}, failed={counts['failed']}, skipped={counts['skipped']})"
    )
