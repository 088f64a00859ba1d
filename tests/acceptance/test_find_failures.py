"""Finding what failed (``status --state/--limit``, ``show``, ``retry`` explain themselves) and a
``demo`` that never writes into a real archive."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from archiver.arguments import QUEUE_STATE_NAMES
from archiver.queue import QUEUE_STATES

from .conftest import Cli
from .test_cli import FAST, status_json
from .test_terminal import run_in_terminal

pytestmark = pytest.mark.timeout(180)

FAILED = ["resp_garbage_f1", "resp_garbage_f2"]
NOT_FOUND = [f"resp_notfound_n{i:02d}" for i in range(12)]


def test_the_parser_knows_every_queue_state() -> None:
    assert QUEUE_STATE_NAMES == QUEUE_STATES


@pytest.fixture
def failures(cli: Cli, mock_process: str) -> Cli:
    """2 failed rows, then 12 not_found rows written after them, 1 archived, 1 pending."""
    env = {**FAST, "ARCHIVER_BASE_URL": mock_process}
    assert cli("enqueue", input="\n".join([*FAILED, "resp_ok_a1"]).encode()).returncode == 0
    assert cli("run", "--once", **env).returncode == 0
    assert cli("enqueue", input="\n".join(NOT_FOUND).encode()).returncode == 0
    assert cli("run", "--once", **env).returncode == 0
    assert cli("enqueue", input=b"resp_ok_waiting\n").returncode == 0
    return cli


def test_status_lists_failed_rows_first_and_filters_by_state(failures: Cli) -> None:
    cli = failures
    default = status_json(cli)
    errors = default["recent_errors"]
    assert len(errors) == 10 and default["error_rows"] == 14
    assert [e["state"] for e in errors] == ["failed"] * 2 + ["not_found"] * 8
    assert {e["response_id"] for e in errors[:2]} == set(FAILED)

    only_failed = json.loads(cli("status", "--json", "--state", "failed", "--limit", "1").stdout)
    assert [e["state"] for e in only_failed["recent_errors"]] == ["failed"]
    assert only_failed["error_rows"] == 2 and only_failed["error_states"] == ["failed"]
    both = json.loads(
        cli("status", "--json", "--state", "not_found", "--state", "failed", "--limit", "50").stdout
    )
    assert len(both["recent_errors"]) == 14 and both["recent_errors"][0]["state"] == "failed"
    assert json.loads(cli("status", "--json", "--state", "archived").stdout)["recent_errors"] == []

    plain = cli("status", "--state", "not_found", "--limit", "3").stdout.decode()
    assert "recent errors in not_found (3 of 12; --limit N shows more):" in plain
    assert sum(line.startswith("  resp_notfound_") for line in plain.splitlines()) == 3
    assert "resp_garbage" not in plain
    nothing = cli("status", "--state", "in_flight").stdout.decode()
    assert "recent errors in in_flight: none" in nothing

    status, table = run_in_terminal(cli, "status", "--state", "failed", "--limit", "1", timeout=60)
    assert status == 0, table
    assert "recent errors in failed (1 of 2" in table
    assert sum(rid in table for rid in FAILED) == 1 and "resp_notfound" not in table

    for bad in (["--state", "lost"], ["--limit", "-1"], ["--limit", "many"]):
        out = cli("status", *bad)
        assert out.returncode == 2 and b"Traceback" not in out.stderr, out.stderr


def test_show_says_where_an_id_that_is_not_archived_stands(failures: Cli) -> None:
    cli = failures
    failed = cli("show", FAILED[0])
    assert failed.returncode == 1 and failed.stdout == b""
    err = failed.stderr.decode()
    assert err.count("\n") == 1 and "is not archived: failed (attempts 3, status 200)" in err, err
    assert "gave up after 3 attempts" in err  # the last error

    gone = cli("show", NOT_FOUND[0]).stderr.decode()
    assert "is not archived: not_found (" in gone and "404" in gone, gone
    waiting = cli("show", "resp_ok_waiting")
    assert waiting.returncode == 1 and b"is not archived: pending (attempts 0)" in waiting.stderr
    unknown = cli("show", "resp_never_queued")
    assert unknown.returncode == 1
    assert unknown.stderr.decode().strip().endswith("resp_never_queued is not archived and not in the queue")
    assert cli("show", "resp_ok_a1").returncode == 0


def test_retry_says_why_nothing_moved(failures: Cli) -> None:
    cli = failures
    out = cli(
        "retry", "resp_ok_a1", "resp_never_queued", "resp_ok_waiting", NOT_FOUND[0], "--state", "failed"
    )
    assert out.returncode == 0
    assert out.stdout.decode().strip() == "moved 0 back to pending"
    assert out.stderr.decode().splitlines() == [
        "archiver: resp_ok_a1 not moved: already archived",
        "archiver: resp_never_queued not moved: not in the queue",
        "archiver: resp_ok_waiting not moved: already pending",
        f"archiver: {NOT_FOUND[0]} not moved: not_found, not in --state failed",
    ]

    moved = cli("retry", FAILED[0], "resp_ok_a1")
    assert moved.stdout.decode().strip() == "moved 1 back to pending"
    assert moved.stderr.decode().splitlines() == ["archiver: resp_ok_a1 not moved: already archived"]

    assert cli("retry", "--state", "failed").stdout.decode().strip() == "moved 1 back to pending"
    again = cli("retry", "--state", "failed")
    assert again.stdout.decode().strip() == "moved 0 back to pending: no failed rows"
    assert cli("retry").stdout.decode().strip() == "moved 12 back to pending"
    assert cli("retry").stdout.decode().strip() == "moved 0 back to pending: no failed or not_found rows"


def test_retry_moves_the_valid_ids_beside_invalid_ones(failures: Cli) -> None:
    """Like ``enqueue``: each invalid ID is reported with its reason, the valid ones still
    move, the exit status is 1. An invalid ID alone moves nothing (never every row)."""
    cli = failures
    space = "archiver: rejected: invalid response ID 'bad id': character ' ' (space) not allowed"
    out = cli("retry", "bad id", FAILED[0], "resp_ok_a1", "x/y")
    assert out.returncode == 1, out.stderr
    assert out.stdout.decode().strip() == "moved 1 back to pending, rejected 2"
    assert out.stderr.decode().splitlines() == [
        space,
        "archiver: rejected: invalid response ID 'x/y': character '/' not allowed",
        "archiver: resp_ok_a1 not moved: already archived",
    ], out.stderr
    assert b"Traceback" not in out.stderr

    # --state with IDs: the valid ones in that state move, the others say why.
    out = cli("retry", "--state", "not_found", NOT_FOUND[0], "bad id", FAILED[1])
    assert out.returncode == 1
    assert out.stdout.decode().strip() == "moved 1 back to pending, rejected 1"
    assert out.stderr.decode().splitlines() == [
        space,
        f"archiver: {FAILED[1]} not moved: failed, not in --state not_found",
    ]

    # Only invalid IDs: nothing moves (not a retry of every failed/not_found row).
    before = status_json(cli)["states"]
    out = cli("retry", "--state", "failed", "bad id")
    assert out.returncode == 1
    assert out.stdout.decode().strip() == "moved 0 back to pending, rejected 1"
    assert out.stderr.decode().splitlines() == [space]
    assert status_json(cli)["states"] == before
    assert before["failed"] == 1 and before["not_found"] == 11


def test_retry_of_an_id_in_flight_says_so(sqlite_cli: Cli, tmp_path: Path) -> None:
    from .conftest import start_mock_process

    gen = start_mock_process(tmp_path)
    base_url = next(gen)
    sqlite_cli("enqueue", input=b"resp_hang1_x\n")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "archiver", "run"],
        env={**sqlite_cli.env, **FAST, "ARCHIVER_BASE_URL": base_url, "ARCHIVER_GRACE_SECONDS": "0.5"},
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while status_json(sqlite_cli)["states"]["in_flight"] != 1:
            assert time.monotonic() < deadline, "the row never went in flight"
            time.sleep(0.1)
        out = sqlite_cli("retry", "resp_hang1_x")
        assert out.stdout.decode().strip() == "moved 0 back to pending"
        assert (
            out.stderr.decode().strip()
            == "archiver: resp_hang1_x not moved: in flight (a worker is fetching it)"
        )
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        gen.close()


def test_demo_ignores_the_archive_variable_and_refuses_a_real_archive(
    cli: Cli, mock_process: str, tmp_path: Path
) -> None:
    # A real archive: one archived response, one pending ID, none of them the demo's.
    cli("enqueue", input=b"resp_ok_real1\n")
    assert cli("run", "--once", ARCHIVER_BASE_URL=mock_process, **FAST).returncode == 0
    cli("enqueue", input=b"resp_ok_real2\n")
    before = status_json(cli)
    body = cli("show", "resp_ok_real1").stdout

    # ARCHIVER_DATABASE_URL (in cli.env) names the archive: the demo writes demo.db instead.
    out = cli("demo", "--count", "9", timeout=120)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "demo.db").is_file()
    assert "--database-url sqlite:///demo.db" in out.stdout.decode()
    demo = Cli({**cli.env, "ARCHIVER_DATABASE_URL": "sqlite:///demo.db"}, tmp_path)
    assert status_json(demo)["total"] == 9

    # Named on its command line, the archive is refused before anything is written.
    url = cli.env["ARCHIVER_DATABASE_URL"]
    refused = cli("demo", "--count", "9", "--database-url", url)
    assert refused.returncode == 1
    err = refused.stderr.decode()
    assert err.count("\n") == 1 and "holds IDs the demo did not create" in err and "resp_ok_real" in err, err

    after = status_json(cli)
    assert (after["states"], after["total"]) == (before["states"], before["total"])
    assert cli("show", "resp_ok_real1").stdout == body
    assert cli("show", "resp_ok_demo00000").returncode == 1

    # A demo database is reused: the demo's own IDs are not foreign.
    again = cli("demo", "--count", "9", "--database-url", "sqlite:///demo.db", timeout=120)
    assert again.returncode == 0, again.stderr


def test_demo_help_says_the_variable_is_ignored(sqlite_cli: Cli) -> None:
    text = " ".join(sqlite_cli("demo", "--help").stdout.decode().split())
    assert "ARCHIVER_DATABASE_URL is ignored" in text and "sqlite:///demo.db" in text


def test_the_status_table_prints_provider_text_as_it_is(sqlite_cli: Cli) -> None:
    """An error message with rich markup in it is data: printed as it is, never styled away."""
    import sqlite3

    assert sqlite_cli("enqueue", input=b"resp_markup_1\n").returncode == 0
    db = sqlite_cli.env["ARCHIVER_DATABASE_URL"].removeprefix("sqlite:///")
    with sqlite3.connect(db) as conn:
        conn.execute(
            "UPDATE archive_queue SET state = 'failed', last_error = ? WHERE id = 'resp_markup_1'",
            ("502 [bold]gateway[/bold] said [link=x]no[/link]",),
        )
    status, table = run_in_terminal(sqlite_cli, "status", timeout=60)
    assert status == 0, table
    flat = " ".join(table.split())
    assert "[bold]gateway[/bold]" in flat and "[link=x]no[/link]" in flat, table
