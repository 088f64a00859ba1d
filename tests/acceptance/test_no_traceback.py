"""No traceback for an expected fault (issue 16): every command, through the real CLI, against
malformed database URLs, odd paths, a closed stdout and endless stdin.

Each run must end within its timeout with exit status 0, 1 or 2, at most a few lines on
stderr, and no "Traceback". The commands run in parallel threads (each is its own process).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.conftest import base_env
from tests.mounts import MountRefused, read_only

TIMEOUT_S = 60
NO_SERVER = "http://127.0.0.1:9/v1"  # loopback, so `run` needs no key; nothing listens


def commands(out_dir: Path) -> list[list[str]]:
    """Every command that opens the database, as the issue lists them."""
    return [
        ["enqueue"],
        ["run", "--once", "--base-url", NO_SERVER],
        ["status"],
        ["status", "--json"],
        ["show", "resp_ok_demo00000"],
        ["retry"],
        ["check"],
        ["migrate"],
        ["export", str(out_dir)],
        ["renormalize", "--all"],
        ["compact"],
        ["demo", "--count", "1"],
    ]


def archiver(
    args: list[str], cwd: Path, *, stdout: Any = subprocess.PIPE, stdin: str = "/dev/zero"
) -> subprocess.CompletedProcess[bytes]:
    """One CLI run with stdin from /dev/zero (endless input), bounded by TIMEOUT_S."""
    with open(stdin, "rb") as source:
        return subprocess.run(
            [sys.executable, "-m", "archiver", *args],
            stdin=source,
            stdout=stdout,
            stderr=subprocess.PIPE,
            env=base_env(),
            cwd=cwd,
            timeout=TIMEOUT_S,
            check=False,
        )


def assert_expected_fault(
    done: subprocess.CompletedProcess[bytes], codes: tuple[int, ...] = (0, 1, 2)
) -> None:
    err = done.stderr.decode(errors="replace")
    where = f"{done.args[3:]}: exit {done.returncode}\n{err[-2000:]}"
    assert done.returncode in codes, where
    assert "Traceback" not in err, where
    assert "[SQL" not in err and "[parameters" not in err, where
    assert len(err.strip().splitlines()) <= 4, where


def run_everywhere(
    runs: list[tuple[list[str], Path]], **kwargs: Any
) -> list[subprocess.CompletedProcess[bytes]]:
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda run: archiver(run[0], run[1], **kwargs), runs))


def with_url(command: list[str], url: str) -> list[str]:
    return [*command, "--database-url", url]


# --- malformed database URLs -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u@127.0.0.1:abc/db",  # a port that is not a number
        "postgresql://u:pw@[::1/db",  # an unclosed IPv6 bracket
        "mysql://x",  # an engine archiver does not support
        "sqlite://x.db",  # two slashes: a host, not a file
        "sqlite:///",  # sqlite:///$DB with DB unset
        "archive.db",  # a bare path
        "sqlite:///%00",  # a NUL in the path (it reached os.unlink)
        "postgresql://u:pw@127.0.0.1:99999/db",  # a port past 65535 (it connected to 99999 % 65536)
    ],
)
def test_a_malformed_database_url_is_one_line_and_exit_2_on_every_command(tmp_path: Path, url: str) -> None:
    runs = [(with_url(command, url), tmp_path) for command in commands(tmp_path / "out")]
    for done in run_everywhere(runs):
        assert_expected_fault(done, codes=(2,))
        assert done.stderr.startswith(b"archiver: error: "), done.stderr
        assert b"pw" not in done.stderr
    assert not (tmp_path / "archive.db").exists() and not (tmp_path / "x.db").exists()


# --- odd paths ------------------------------------------------------------------------------------------


@pytest.fixture
def odd_paths(tmp_path: Path) -> Iterator[dict[str, Path]]:
    """SQLite paths that cannot be an archive, by kind."""
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory\n")
    a_directory = tmp_path / "a-directory"
    a_directory.mkdir()
    yield {
        "proc": Path("/proc/x.db"),
        "sys": Path("/sys/x.db"),
        "file where a directory is expected": a_file / "x.db",
        "directory where a file is expected": a_directory,
        "not a database": a_file,
    }


def test_odd_paths_are_one_line_on_every_command(tmp_path: Path, odd_paths: dict[str, Path]) -> None:
    runs = [
        (with_url(command, f"sqlite:///{path}"), tmp_path)
        for path in odd_paths.values()
        for command in commands(tmp_path / "out")
    ]
    for done in run_everywhere(runs):
        assert_expected_fault(done, codes=(1,))
    assert not Path("/proc/x.db").exists() and not Path("/sys/x.db").exists()
    assert (tmp_path / "a-file").read_text() == "not a directory\n"


def test_an_unwritable_directory_is_one_line_on_every_command(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    full = tmp_path / "with-archive"
    full.mkdir()
    made = archiver(["migrate", "--database-url", f"sqlite:///{full / 'archive.db'}"], tmp_path)
    assert made.returncode == 0, made.stderr
    try:
        mounts = [read_only(empty), read_only(full)]
        for mount in mounts:
            mount.__enter__()
    except MountRefused as refused:
        pytest.skip(f"needs a read-only bind mount (tests run as root, who writes through modes): {refused}")
    try:
        runs = [
            (with_url(command, f"sqlite:///{directory / 'archive.db'}"), tmp_path)
            for directory in (empty, full)
            for command in commands(tmp_path / "out")
        ]
        results = run_everywhere(runs)
        for done in results:
            assert_expected_fault(done)
        for done in results[: len(results) // 2]:  # no archive, and none can be created
            assert done.returncode == 1, done.stderr
        assert list(empty.iterdir()) == []
    finally:
        for mount in reversed(mounts):
            mount.__exit__(None, None, None)


# --- export targets ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_archive(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An archive with the demo's few IDs archived (``resp_ok_demo00000`` among them)."""
    where = tmp_path_factory.mktemp("demo")
    url = f"sqlite:///{where / 'demo.db'}"
    done = archiver(["demo", "--count", "1", "--database-url", url], where, stdin="/dev/null")
    assert done.returncode == 0, done.stderr
    return url


def test_an_export_into_an_unusable_directory_is_one_line(tmp_path: Path, demo_archive: str) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    targets = [Path("/proc"), Path("/proc/archive-export"), a_file, a_file / "below", Path("/sys/x")]
    try:
        unwritable = tmp_path / "unwritable"
        unwritable.mkdir()
        mount = read_only(unwritable)
        mount.__enter__()
    except MountRefused:
        mount = None
    else:
        targets.append(unwritable)
    try:
        runs = [(["export", str(target), "--database-url", demo_archive], tmp_path) for target in targets]
        for done in run_everywhere(runs):
            assert_expected_fault(done, codes=(1, 2))
            assert done.stderr.count(b"\n") == 1 and b"cannot export into" in done.stderr, done.stderr
    finally:
        if mount is not None:
            mount.__exit__(None, None, None)
    assert a_file.read_text() == "x"
    if mount is None:
        pytest.skip("the unwritable-directory variant needs a read-only bind mount (tests run as root)")


# --- a closed stdout, endless stdin ------------------------------------------------------------------------


def test_a_closed_stdout_is_no_traceback(tmp_path: Path, demo_archive: str) -> None:
    """``status --json | head -c1`` and friends, made certain: the reading end is closed before
    the command writes (a real `head` may or may not have exited by then)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        runs = [
            (with_url(command, demo_archive), tmp_path)
            for command in (
                ["status", "--json"],
                ["status"],
                ["show", "resp_ok_demo00000"],
                ["export", str(tmp_path / "out")],
                ["check"],
                ["retry"],
                ["migrate"],
            )
        ]
        for done in run_everywhere(runs, stdout=write_end, stdin="/dev/null"):
            assert_expected_fault(done)
            assert done.stderr == b"", done.stderr
    finally:
        os.close(write_end)


def test_a_real_pipe_into_head_is_no_traceback(tmp_path: Path, demo_archive: str) -> None:
    for command in (["status", "--json"], ["show", "resp_ok_demo00000"]):
        shell = subprocess.run(
            [
                "bash",
                "-c",
                'set -o pipefail; "$@" | head -c1 >/dev/null; echo "${PIPESTATUS[0]}" >&2',
                "pipe",
                sys.executable,
                "-m",
                "archiver",
                *with_url(command, demo_archive),
            ],
            capture_output=True,
            env=base_env(),
            cwd=tmp_path,
            timeout=TIMEOUT_S,
            check=False,
        )
        assert b"Traceback" not in shell.stderr, shell.stderr
        assert shell.stderr.strip().splitlines()[-1] in (b"0", b"1"), shell.stderr


def test_enqueue_from_dev_zero_ends_without_a_traceback(tmp_path: Path) -> None:
    done = archiver(["enqueue", "--database-url", f"sqlite:///{tmp_path / 'archive.db'}"], tmp_path)
    assert_expected_fault(done)
