"""Queue rows in states archiver does not know, written by another application: what
``status``, ``retry`` and ``show`` make of hostile ones (terminal escapes, and on SQLite a
BLOB, a number or bytes that are not UTF-8 in the TEXT column)."""

from __future__ import annotations

import asyncio
import json
import sqlite3

import pytest
from sqlalchemy import text

from archiver.db import open_database

from .conftest import Cli

pytestmark = pytest.mark.timeout(120)

ESCAPE_STATE = "\x1b]0;x\x07\x1b[2J"
"""Sets the terminal's title and clears the screen when printed raw (16 characters fit
PostgreSQL's column)."""


async def _set_state(url: str, rid: str, state: str) -> None:
    async with open_database(url, create=False) as engine, engine.begin() as conn:
        update = text("UPDATE archive_queue SET state = :s WHERE id = :id")
        await conn.execute(update, {"s": state, "id": rid})


def test_retry_and_show_never_print_a_hand_set_state_raw(cli: Cli) -> None:
    assert cli("enqueue", input=b"resp_esc\nresp_ok\n").returncode == 0
    asyncio.run(_set_state(cli.env["ARCHIVER_DATABASE_URL"], "resp_esc", ESCAPE_STATE))

    out = cli("retry", "resp_esc")
    assert out.returncode == 0, out.stderr
    assert b"\x1b" not in out.stderr and b"\x07" not in out.stderr, out.stderr
    line = out.stderr.decode()
    assert "resp_esc not moved" in line and "unknown state" in line, line
    # No --state takes such a row: the line must not suggest one does.
    assert "not in --state" not in line, line

    out = cli("show", "resp_esc")
    assert out.returncode == 1
    assert b"\x1b" not in out.stderr and b"\x07" not in out.stderr, out.stderr
    assert b"unknown state" in out.stderr, out.stderr


def _hostile_sqlite_states(path: str) -> None:
    """What SQLite keeps in a TEXT column when another program writes it."""
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE archive_queue SET state = X'FFFE42' WHERE id = 'resp_blob'")
        conn.execute("UPDATE archive_queue SET state = 42 WHERE id = 'resp_number'")
        conn.execute("UPDATE archive_queue SET state = CAST(X'FFFE41' AS TEXT) WHERE id = 'resp_latin'")
        conn.execute("UPDATE archive_queue SET state = 'nul' || char(0) || 'x' WHERE id = 'resp_nul'")
    conn.close()


def test_status_retry_show_survive_states_sqlite_keeps_from_other_writers(sqlite_cli: Cli) -> None:
    ids = ["resp_blob", "resp_number", "resp_latin", "resp_nul", "resp_ok"]
    assert sqlite_cli("enqueue", input="\n".join(ids).encode()).returncode == 0
    _hostile_sqlite_states(str(sqlite_cli.cwd / "archive.db"))

    out = sqlite_cli("status", "--json")
    assert out.returncode == 0, out.stderr.decode()[-600:]
    status = json.loads(out.stdout)
    assert status["total"] == 5 and status["states"]["pending"] == 1
    assert sum(status["unknown_states"].values()) == 4, status["unknown_states"]

    out = sqlite_cli("status")
    assert out.returncode == 0, out.stderr.decode()[-600:]
    assert b"Traceback" not in out.stderr
    assert out.stdout.count(b"unknown state") >= 4, out.stdout.decode()
    assert b"\x00" not in out.stdout

    out = sqlite_cli("retry", *ids[:4])  # one call: each CLI start costs about a second
    assert out.returncode == 0, out.stderr.decode()[-600:]
    assert out.stderr.count(b"unknown state") == 4 and b"\x00" not in out.stderr, out.stderr
    for rid in ("resp_latin", "resp_nul"):
        out = sqlite_cli("show", rid)
        assert out.returncode == 1
        assert b"cannot use the database" not in out.stderr, (rid, out.stderr)
        assert b"unknown state" in out.stderr and b"\x00" not in out.stderr, (rid, out.stderr)


def _hostile_sqlite_sources(path: str) -> None:
    """Rows another program queued with a source that is not a name: a BLOB, bytes that are
    not UTF-8 in the TEXT column, and a terminal escape."""
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE archive_queue SET source = X'FF00' WHERE id = 'resp_src_blob'")
        conn.execute("UPDATE archive_queue SET source = CAST(X'FF41' AS TEXT) WHERE id = 'resp_src_latin'")
        conn.execute("UPDATE archive_queue SET source = ? WHERE id = 'resp_src_esc'", (ESCAPE_STATE,))
    conn.close()


def test_run_status_check_survive_sources_another_writer_set(sqlite_cli: Cli, mock_process: str) -> None:
    ids = ["resp_src_blob", "resp_src_latin", "resp_src_esc", "resp_ok_h14"]
    assert sqlite_cli("enqueue", input="\n".join(ids).encode()).returncode == 0
    _hostile_sqlite_sources(str(sqlite_cli.cwd / "archive.db"))

    out = sqlite_cli("status", "--json")
    assert out.returncode == 0, out.stderr.decode()[-600:]
    status = json.loads(out.stdout)
    assert status["total"] == 4 and len(status["sources"]) == 4, status["sources"]

    out = sqlite_cli("status")
    assert out.returncode == 0, out.stderr.decode()[-600:]
    assert b"\x1b" not in out.stdout + out.stderr and b"\x00" not in out.stdout

    out = sqlite_cli("check")
    assert out.returncode == 1  # 3 rows wait for sources nobody serves
    assert b"unreachable" not in out.stdout + out.stderr, out.stdout + out.stderr
    assert b"\x1b" not in out.stdout + out.stderr, out.stdout + out.stderr

    # The other rows are still archived: one bad row does not stop the backfill.
    run = sqlite_cli(
        "run",
        "--once",
        ARCHIVER_BASE_URL=mock_process,
        ARCHIVER_API_KEY="sk-h14",
        ARCHIVER_POLL_INTERVAL="0.05",
    )
    assert run.returncode == 0, run.stderr.decode()[-600:]
    assert json.loads(run.stdout)["archived"] == 1


def _insert_hostile_ids(path: str) -> None:
    """Rows another program INSERTed with IDs SQLite keeps but the driver cannot read as
    text: bytes that are not UTF-8 in the TEXT column, and a BLOB."""
    with sqlite3.connect(path) as conn:
        for value in ("CAST(X'FF41' AS TEXT)", "X'41FF'"):
            conn.execute(
                "INSERT INTO archive_queue (id, source, state, enqueued_at, next_attempt_at, updated_at) "
                f"SELECT {value}, source, state, enqueued_at, next_attempt_at, updated_at "
                "FROM archive_queue LIMIT 1"
            )
    conn.close()


def test_run_once_archives_the_other_rows_beside_ids_sqlite_cannot_read(
    sqlite_cli: Cli, mock_process: str
) -> None:
    assert sqlite_cli("enqueue", input=b"resp_ok_h14a\nresp_ok_h14b\n").returncode == 0
    _insert_hostile_ids(str(sqlite_cli.cwd / "archive.db"))

    run = sqlite_cli(
        "run",
        "--once",
        ARCHIVER_BASE_URL=mock_process,
        ARCHIVER_API_KEY="sk-h14",
        ARCHIVER_POLL_INTERVAL="0.05",
        timeout=20,
    )
    assert run.returncode == 0, run.stderr.decode()[-800:]
    summary = json.loads(run.stdout)
    assert summary["archived"] == 2, summary
    # The two unreadable rows end failed, saying why, not in flight for ever.
    out = sqlite_cli("status", "--json")
    assert out.returncode == 0, out.stderr.decode()[-600:]
    status = json.loads(out.stdout)
    assert status["states"]["archived"] == 2 and status["states"]["failed"] == 2, status["states"]
    assert all("not text" in e["error"] for e in status["recent_errors"]), status["recent_errors"]


def test_status_per_source_lines_stay_short_with_many_unknown_states(sqlite_cli: Cli) -> None:
    """The state table lists 20 unknown states and counts the rest; each per-source line
    listed every one (2 lines of 24,513 characters for 5,000 distinct states)."""
    ids = [f"resp_{i}" for i in range(400)]
    assert sqlite_cli("enqueue", input="\n".join(ids).encode()).returncode == 0
    with sqlite3.connect(sqlite_cli.cwd / "archive.db") as conn:
        conn.execute(
            "UPDATE archive_queue SET state = 'st' || substr(id, 6), source = CASE "
            "WHEN CAST(substr(id, 6) AS INTEGER) % 2 = 0 THEN 'other' ELSE 'default' END"
        )
    conn.close()
    out = sqlite_cli("status")
    assert out.returncode == 0, out.stderr.decode()[-600:]
    lines = out.stdout.decode().splitlines()
    assert max(len(line) for line in lines) < 1000, max(lines, key=len)[:300]
    per_source = [line for line in lines if line.startswith("  other ")]
    assert len(per_source) == 1 and "180 more unknown states" in per_source[0], per_source


def test_retry_prints_the_first_100_rejections_as_enqueue_does(sqlite_cli: Cli) -> None:
    """README: an invalid ID is rejected 'as enqueue rejects a line', which prints the first
    100 and counts the rest; retry printed all 300 (20,000 from an xargs line: 20,000 lines)."""
    assert sqlite_cli("enqueue", input=b"resp_failed_h14\n").returncode == 0
    with sqlite3.connect(sqlite_cli.cwd / "archive.db") as conn:
        conn.execute("UPDATE archive_queue SET state = 'failed' WHERE id = 'resp_failed_h14'")
    conn.close()
    bad = [f"bad/{i}" for i in range(300)]
    out = sqlite_cli("retry", *bad, "resp_failed_h14")
    assert out.returncode == 1
    rejected = [line for line in out.stderr.decode().splitlines() if "rejected: invalid response ID" in line]
    assert len(rejected) == 100, len(rejected)
    assert out.stdout.decode().strip() == "moved 1 back to pending, rejected 300 (200 not printed)"


def test_status_and_show_read_a_last_error_that_is_not_utf8(sqlite_cli: Cli) -> None:
    """A failed row whose last_error another program wrote in Latin-1 (SQLite keeps the
    bytes in the TEXT column): status and show failed for the whole queue."""
    assert sqlite_cli("enqueue", input=b"resp_latin_err\nresp_fine\n").returncode == 0
    with sqlite3.connect(sqlite_cli.cwd / "archive.db") as conn:
        conn.execute(
            "UPDATE archive_queue SET state = 'failed', last_error = CAST(X'6E6FE9' AS TEXT) "
            "WHERE id = 'resp_latin_err'"
        )
    conn.close()
    out = sqlite_cli("status", "--json")
    assert out.returncode == 0, out.stderr.decode()[-600:]
    status = json.loads(out.stdout)
    assert status["states"]["failed"] == 1 and status["recent_errors"][0]["response_id"] == "resp_latin_err"
    out = sqlite_cli("show", "resp_latin_err")
    assert out.returncode == 1
    assert b"is not archived: failed" in out.stderr, out.stderr


def test_retry_never_echoes_the_api_key_given_as_an_id(cli: Cli) -> None:
    """An operator who pastes the key where an ID goes (``archiver retry $ARCHIVER_API_KEY``):
    ``show`` and ``enqueue`` print ``***``, retry printed the key in its rejected and
    not-moved lines."""
    key = "sk-h14CANARY0a1b2c3d4e5f6a7b8"
    assert cli("enqueue", input=b"resp_h14\n").returncode == 0
    out = cli("retry", key, f"{key}/x", "resp_h14", ARCHIVER_API_KEY=key)
    assert out.returncode == 1
    said = out.stdout + out.stderr
    assert key.encode() not in said, said
    assert b"rejected 1" in out.stdout and b"not in the queue" in out.stderr, said


def test_status_on_a_terminal_prints_ids_with_brackets_as_they_are(sqlite_cli: Cli) -> None:
    """IDs another program queued, failed by archiver: the terminal table read each ID as
    rich markup ('[/]': MarkupError traceback, exit 1; '[bold red]x' printed as 'x')."""
    from .test_terminal import run_in_terminal

    assert sqlite_cli("enqueue", input=b"resp_ok_h14\n").returncode == 0
    with sqlite3.connect(sqlite_cli.cwd / "archive.db") as conn:
        for rid in ("[/]", "[bold]b"):
            conn.execute(
                "INSERT INTO archive_queue (id, source, state, enqueued_at, next_attempt_at, updated_at, "
                "last_error) SELECT ?, source, 'failed', enqueued_at, next_attempt_at, updated_at, "
                "'invalid response ID' FROM archive_queue LIMIT 1",
                (rid,),
            )
    conn.close()
    status, screen = run_in_terminal(sqlite_cli, "status", timeout=60)
    assert status == 0, screen[-800:]
    assert "Traceback" not in screen and "[/]" in screen and "[bold]b" in screen, screen[-800:]


def test_status_never_prints_an_escape_from_a_queued_id_or_error(sqlite_cli: Cli) -> None:
    """A failed row another program queued with an ID and a last_error holding escape
    sequences: the recent-errors lines printed both raw (title set, text turned red)."""
    assert sqlite_cli("enqueue", input=b"resp_ok_h14\n").returncode == 0
    with sqlite3.connect(sqlite_cli.cwd / "archive.db") as conn:
        conn.execute(
            "INSERT INTO archive_queue (id, source, state, enqueued_at, next_attempt_at, updated_at, "
            "last_error) SELECT ?, source, 'failed', enqueued_at, next_attempt_at, updated_at, ? "
            "FROM archive_queue LIMIT 1",
            ("\x1b]0;T\x07\x1b[31mred", "bad \x1b[2J\x1b]0;T\x07 error"),
        )
    conn.close()
    out = sqlite_cli("status")
    assert out.returncode == 0, out.stderr.decode()[-600:]
    assert b"\x1b" not in out.stdout and b"\x07" not in out.stdout, out.stdout
    assert b"red" in out.stdout and b"bad" in out.stdout and b"error" in out.stdout, out.stdout
