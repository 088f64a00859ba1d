"""Acceptance fixtures: the real ``archiver`` CLI in subprocesses, the mock API as its own process."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


@dataclass
class Cli:
    """Runs ``python -m archiver`` with a clean environment plus the given variables."""

    env: dict[str, str]
    cwd: Path

    def __call__(
        self, *args: str, input: bytes | None = None, timeout: float = 120, **env: str
    ) -> subprocess.CompletedProcess[bytes]:
        full_env = {**self.env, **env}
        return subprocess.run(
            [sys.executable, "-m", "archiver", *args],
            input=input,
            capture_output=True,
            env=full_env,
            cwd=self.cwd,
            timeout=timeout,
            check=False,
        )


def base_env() -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "PYTHONPATH", "VIRTUAL_ENV", "TMPDIR")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env["ARCHIVER_LOG_LEVEL"] = "warning"
    return env


@pytest.fixture
def cli(tmp_path: Path, db_url: str) -> Cli:
    """The CLI against a fresh database (SQLite and PostgreSQL)."""
    env = base_env()
    env["ARCHIVER_DATABASE_URL"] = db_url
    return Cli(env, tmp_path)


@pytest.fixture
def sqlite_cli(tmp_path: Path) -> Cli:
    """The CLI against a fresh SQLite file only."""
    env = base_env()
    env["ARCHIVER_DATABASE_URL"] = f"sqlite:///{tmp_path / 'archive.db'}"
    return Cli(env, tmp_path)


@pytest.fixture
def mock_process(tmp_path: Path) -> Iterator[str]:
    """``archiver mock-server`` as a separate process; yields its base URL."""
    yield from start_mock_process(tmp_path)


def start_mock_process(tmp_path: Path, *extra: str, env: dict[str, Any] | None = None) -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "archiver", "mock-server", "--port", "0", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**base_env(), **(env or {})},
        cwd=tmp_path,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    match = re.search(r"(http://127\.0\.0\.1:\d+/v1)", line)
    try:
        if not match:
            raise AssertionError(f"mock server did not start: {line!r}")
        yield match.group(1)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stdout.close()


def spawn_archiver(env: dict[str, str], cwd: Path, *args: str) -> subprocess.Popen[bytes]:
    """``archiver ARGS`` in a subprocess with ``env``, no input, its output piped."""
    return subprocess.Popen(
        [sys.executable, "-m", "archiver", *args],
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def start_daemon(env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    """``archiver run`` (the daemon) in a subprocess with ``env``, its output piped."""
    return spawn_archiver(env, cwd, "run")


def children_of(pid: int) -> list[int]:
    """PIDs whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces: the fields after the last ')' are fixed.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry))
    return found


def is_running(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (exited, not yet reaped by its parent) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat.rsplit(b")", 1)[1].split()[0] != b"Z"
