"""Options as users set them: every documented one works, bad values are one-line errors (exit 2).

The real CLI in subprocesses; the mock API as its own process on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from archiver.db import open_database
from archiver.holds import Hold
from archiver.workers import record_worker

from .conftest import Cli

pytestmark = pytest.mark.timeout(180)


def _with_env(cli: Cli, env: dict[str, str]) -> Cli:
    return Cli({**cli.env, **env}, cli.cwd)


def _one_line_error(out: subprocess.CompletedProcess[bytes]) -> str:
    """The stderr of a run that must fail with exit 2 and one line, no traceback."""
    stderr = out.stderr.decode()
    assert out.returncode == 2, (out.returncode, stderr)
    assert "Traceback" not in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    return stderr.strip()


def test_max_rps_paces_a_run(sqlite_cli: Cli, mock_process: str, tmp_path: Path) -> None:
    """30 IDs at 5 requests/s: a burst of up to 5, then 25 more at 0.2 s each, so at least ~5 s.

    Without the limit the same run takes well under 2 s on the mock. Only a lower bound is
    asserted: this shows the option works, it is not a speed test.
    """
    ids = [f"resp_ok_rps{i:02d}" for i in range(30)]
    (tmp_path / "ids.txt").write_text("\n".join(ids) + "\n")
    assert sqlite_cli("enqueue", "ids.txt").returncode == 0
    started = time.monotonic()
    run = sqlite_cli(
        "run",
        "--once",
        "--concurrency",
        "8",
        ARCHIVER_BASE_URL=mock_process,
        ARCHIVER_MAX_RPS="5",
    )
    elapsed = time.monotonic() - started
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["archived"] == 30
    assert elapsed >= 4.5, f"30 requests at ARCHIVER_MAX_RPS=5 took only {elapsed:.2f}s"


def test_an_invalid_provider_is_one_line_naming_the_allowed_values(sqlite_cli: Cli) -> None:
    line = _one_line_error(sqlite_cli("run", "--once", ARCHIVER_PROVIDER="bogus"))
    assert line == (
        "archiver: error: ARCHIVER_PROVIDER='bogus': must be one of auto, dashscope, openai, generic"
    )


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("ARCHIVER_WRITER", "threads", "must be one of auto, process, inline"),
        ("ARCHIVER_MAX_RPS", "fast", "must be a number above 0 to 100000"),
        ("ARCHIVER_MAX_RPS", "nan", "must be a number above 0 to 100000"),
        ("ARCHIVER_CONCURRENCY", "1.5", "must be a whole number from 1 to 4096"),
        ("ARCHIVER_CONCURRENCY", "1000000000", "must be a whole number from 1 to 4096"),
        ("ARCHIVER_ALLOW_INSECURE_HTTP", "maybe", "must be one of 1, true, yes, on, 0, false, no, off"),
        ("ARCHIVER_LOG_LEVEL", "loud", "must be one of debug, info, warning, error"),
    ],
)
def test_an_invalid_variable_is_one_line_naming_the_allowed_values(
    sqlite_cli: Cli, variable: str, value: str, expected: str
) -> None:
    line = _one_line_error(_with_env(sqlite_cli, {variable: value})("status"))
    assert line == f"archiver: error: {variable}={value!r}: {expected}"


def test_an_invalid_export_format_variable_is_exit_2_naming_the_formats(
    sqlite_cli: Cli, tmp_path: Path
) -> None:
    assert sqlite_cli("migrate").returncode == 0
    out = sqlite_cli("export", str(tmp_path / "out"), ARCHIVER_EXPORT_FORMAT="xml")
    assert out.returncode == 2
    assert out.stderr.decode().strip() == (
        "archiver: error: ARCHIVER_EXPORT_FORMAT='xml': must be one of jsonl, parquet, csv"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("base_url", "expected"),
    [
        ("https://user:s3cr3t-pw@api.example.test/v1", "must not contain user info"),
        ("https://:s3cr3t-pw@api.example.test/v1", "must not contain user info"),
        ("https://api.example.test/v1?key=s3cr3t-pw", "must not have a query string or fragment"),
        ("https://api.example.test/v1#s3cr3t-pw", "must not have a query string or fragment"),
        ("http://api.example.test/v1", "plain http:// to another host"),
        ("http://127.evil.example/v1", "plain http:// to another host"),
        ("http://[::1", "malformed"),
        ("http://user:s3cr3t-pw@[::1/v1", "malformed"),
        ("http://127.0.0.1:port/v1", "malformed"),
        ("http:///v1", "has no host"),
    ],
)
def test_a_wrong_base_url_is_refused_at_start_without_echoing_secrets(
    sqlite_cli: Cli, base_url: str, expected: str
) -> None:
    # `status` builds the same Settings as `run` and never makes a request.
    line = _one_line_error(sqlite_cli("status", ARCHIVER_BASE_URL=base_url))
    assert expected in line, line
    assert "s3cr3t-pw" not in line, line


def test_plain_http_to_another_host_needs_allow_insecure_http(sqlite_cli: Cli) -> None:
    assert sqlite_cli("migrate").returncode == 0  # `status` only reads: it needs an archive
    insecure = {"ARCHIVER_BASE_URL": "http://api.example.test/v1"}
    assert _with_env(sqlite_cli, insecure)("status").returncode == 2
    out = _with_env(sqlite_cli, insecure)("status", ARCHIVER_ALLOW_INSECURE_HTTP="true")
    assert out.returncode == 0, out.stderr
    for loopback in (
        "http://127.0.0.1:9/v1",
        "http://127.8.9.10/v1",
        "http://[::1]:9/v1",
        "http://localhost/v1",
    ):
        out = sqlite_cli("status", ARCHIVER_BASE_URL=loopback)
        assert out.returncode == 0, (loopback, out.stderr)


def test_check_and_status_report_a_worker_whose_endpoint_is_paused(sqlite_cli: Cli, tmp_path: Path) -> None:
    url = sqlite_cli.env["ARCHIVER_DATABASE_URL"]

    async def paused() -> None:
        async with open_database(url) as engine:
            await record_worker(
                engine,
                "host-a:42",
                state="paused",
                detail="7 connection errors in a row",
                base_url="http://[::1]:8080/v1",
                source="default",
                hold=Hold("connect", "connection refused: [Errno 111]", 42.0),
            )

    assert sqlite_cli("migrate").returncode == 0
    assert sqlite_cli("check").returncode == 0
    asyncio.run(paused())

    check = sqlite_cli("check")
    assert check.returncode == 1
    assert check.stdout == b""
    (line,) = check.stderr.decode().splitlines()
    assert re.fullmatch(
        r"endpoint http://\[::1\]:8080/v1 paused on host-a:42: 7 connection errors in a row \(since \d+s\)",
        line,
    ), line
    status = sqlite_cli("status", "--json")
    assert status.returncode == 0, status.stderr
    (worker,) = json.loads(status.stdout)["workers"]
    assert worker["owner"] == "host-a:42" and worker["state"] == "paused"
    assert worker["detail"] == "7 connection errors in a row"
    assert 0 <= worker["updated_age_s"] < 60
    # The new key says it per source; the human output says it once, under the source.
    held = json.loads(status.stdout)["held_sources"]["default"]
    assert held["kind"] == "connect" and held["last_error"] == "connection refused: [Errno 111]"
    assert 30 < held["next_probe_in_s"] <= 42 and [h["owner"] for h in held["holders"]] == ["host-a:42"]
    human = sqlite_cli("status").stdout.decode()
    assert re.search(
        r"^  default: endpoint paused \(cannot connect\) since \S+Z \(\d+s ago\); 0 pending$", human, re.M
    )
    assert "    last error: connection refused: [Errno 111]\n" in human
    assert re.search(r"^    next probe in \d+s \(\S+Z\)$", human, re.M), human
    assert "workers not fetching" not in human
