"""``archiver status`` on a damaged SQLite archive: queue rows edited by hand or by another
program (SQLite keeps any value in any column). What archiver writes is bounded
(``last_error`` at 2,000 characters); what it reads back must not crash or flood."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from .conftest import Cli

pytestmark = pytest.mark.timeout(90)


def _damage(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        rows = [
            ("resp_blob", "failed", b"\xff\x00\xfe not text", 5.0),
            ("resp_when", "failed", "an error", "not a time"),
            *((f"resp_huge{i}", "failed", "e" * 5_000_000, 4.0) for i in range(3)),
            ("resp_nf", "not_found", "gone", 3.0),
        ]
        conn.executemany(
            "INSERT INTO archive_queue (id, state, last_error, updated_at, attempts) VALUES (?, ?, ?, ?, 1)",
            rows,
        )


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_status_of_hand_edited_error_rows_is_bounded_and_complete(
    sqlite_cli: Cli, tmp_path: Path, as_json: bool
) -> None:
    assert sqlite_cli("migrate").returncode == 0
    _damage(tmp_path / "archive.db")
    done = sqlite_cli("status", *(["--json"] if as_json else []))
    err = done.stderr.decode()
    assert done.returncode == 0 and "Traceback" not in err, err[-3000:]
    assert len(done.stdout) < 100_000, f"{len(done.stdout):,} bytes of status for 6 rows"
    out = done.stdout.decode()
    for rid in ("resp_blob", "resp_when", "resp_huge0", "resp_huge2", "resp_nf"):
        assert rid in out
    if as_json:
        errors = json.loads(out)["recent_errors"]
        assert [e["response_id"] for e in errors][-1] == "resp_nf"  # failed first
        assert all(isinstance(e["error"], str) and len(e["error"]) <= 2000 for e in errors), errors
