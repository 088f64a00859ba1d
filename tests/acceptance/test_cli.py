"""The CLI end to end, as users run it (subprocesses, real database, mock API process)."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from archiver.mockapi import body_for

from .conftest import Cli

pytestmark = pytest.mark.timeout(180)

FAST = {
    "ARCHIVER_BACKOFF_BASE": "0.01",
    "ARCHIVER_BACKOFF_CAP": "0.05",
    "ARCHIVER_NOT_FOUND_RECHECK": "0.05",
    "ARCHIVER_REPOLL": "0.02",
    "ARCHIVER_POLL_INTERVAL": "0.05",
    "ARCHIVER_MAX_ATTEMPTS": "3",
}

ID_FILE = """\
# response IDs exported from the gateway
resp_ok_a1
resp_ok_a2

{"id": "resp_ok_a3", "model": "qwen-plus"}
{"response_id": "resp_notfound_a4"}
{"response": {"id": "resp_pending2_a5"}}
resp_ok_a1
../../etc/passwd
{"id": 42}
{not json
resp_bad id with spaces
92471b7c-94ad-452f-a3f5-c29aa74a95e1
"""


def status_json(cli: Cli) -> dict:
    out = cli("status", "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_enqueue_reports_bad_lines_and_queues_good_ones(cli: Cli, tmp_path: Path) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text(ID_FILE)
    out = cli("enqueue", str(ids))
    assert out.returncode == 1
    err = out.stderr.decode()
    for line_no in (9, 10, 11, 12):
        assert f"ids.txt:{line_no}: rejected" in err, err
    assert "Traceback" not in err
    assert out.stdout.decode().strip() == "queued 6, already known 1, rejected 4"
    assert status_json(cli)["states"]["pending"] == 6
    # Enqueuing again duplicates nothing.
    again = cli("enqueue", input=b"resp_ok_a1\nresp_ok_new\n")
    assert again.returncode == 0
    assert again.stdout.decode().strip() == "queued 1, already known 1, rejected 0"


def test_missing_file_is_a_clear_error(cli: Cli, tmp_path: Path) -> None:
    good = tmp_path / "good.txt"
    good.write_text("resp_ok_1\n")
    out = cli("enqueue", str(tmp_path / "nope.txt"), str(good))
    assert out.returncode != 0
    assert b"cannot read" in out.stderr and b"nope.txt" in out.stderr
    assert b"Traceback" not in out.stderr
    assert status_json(cli)["states"]["pending"] == 1


def test_run_once_show_status_retry(cli: Cli, mock_process: str, tmp_path: Path) -> None:
    ids = [
        "resp_ok_c1",
        "resp_unicode_c2",
        "resp_notfound_c3",
        "resp_garbage_c4",
        "resp_pending2_c5",
        "gen-1784-c6",
    ]
    (tmp_path / "ids.txt").write_text("\n".join(ids) + "\n")
    assert cli("enqueue", "ids.txt").returncode == 0
    run = cli("run", "--once", "--concurrency", "4", ARCHIVER_BASE_URL=mock_process, **FAST)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["archived"] == 4 and summary["not_found"] == 1 and summary["failed"] == 1
    states = status_json(cli)["states"]
    assert states == {"pending": 0, "in_flight": 0, "archived": 4, "not_found": 1, "failed": 1}

    shown = cli("show", "resp_unicode_c2")
    assert shown.returncode == 0
    assert shown.stdout == body_for("resp_unicode_c2")
    pending = cli("show", "resp_pending2_c5")
    assert orjson.loads(pending.stdout)["status"] == "completed"

    missing = cli("show", "resp_notfound_c3")
    assert missing.returncode == 1 and b"not archived" in missing.stderr

    human = cli("status")
    assert b"archived" in human.stdout and b"recent errors" in human.stdout

    retried = cli("retry", "--state", "failed")
    assert retried.returncode == 0 and retried.stdout.strip() == b"moved 1 back to pending"
    assert status_json(cli)["states"]["pending"] == 1


def test_migrate_is_idempotent(cli: Cli) -> None:
    first = cli("migrate")
    second = cli("migrate")
    assert first.returncode == second.returncode == 0
    assert first.stdout == second.stdout and first.stdout.startswith(b"schema at ")


def test_wrong_key_exits_with_clear_message_and_never_prints_the_key(sqlite_cli: Cli, tmp_path: Path) -> None:
    from .conftest import start_mock_process

    gen = start_mock_process(tmp_path, "--require-key", env={"ARCHIVER_MOCK_API_KEY": "sk-mock-correct-0001"})
    base_url = next(gen)
    try:
        sqlite_cli("enqueue", input=b"resp_ok_k1\nresp_ok_k2\n")
        out = sqlite_cli(
            "run",
            "--once",
            ARCHIVER_BASE_URL=base_url,
            ARCHIVER_API_KEY="sk-secret-wrong-7777",
            **FAST,
        )
        assert out.returncode == 3
        both = out.stdout + out.stderr
        assert b"sk-secret-wrong-7777" not in both
        assert b"API key" in out.stderr and b"Traceback" not in out.stderr
        assert status_json(sqlite_cli)["states"]["pending"] == 2
        ok = sqlite_cli(
            "run",
            "--once",
            ARCHIVER_BASE_URL=base_url,
            DASHSCOPE_API_KEY="sk-mock-correct-0001",
            **FAST,
        )
        assert ok.returncode == 0, ok.stderr
        assert b"sk-mock-correct-0001" not in ok.stdout + ok.stderr
        assert status_json(sqlite_cli)["states"]["archived"] == 2
    finally:
        gen.close()


def test_unreachable_database_is_a_clear_error(tmp_path: Path) -> None:
    from .conftest import base_env

    cli = Cli({**base_env(), "ARCHIVER_DATABASE_URL": "postgresql://u:hunter2@127.0.0.1:1/nope"}, tmp_path)
    out = cli("status")
    assert out.returncode != 0
    assert b"cannot use the database" in out.stderr
    assert b"hunter2" not in out.stderr and b"Traceback" not in out.stderr
    missing_dir = Cli({**base_env(), "ARCHIVER_DATABASE_URL": "sqlite:////nonexistent/dir/a.db"}, tmp_path)
    out = missing_dir("status")
    assert out.returncode != 0 and b"does not exist" in out.stderr and b"Traceback" not in out.stderr


def test_run_without_key_against_a_real_provider_refuses(sqlite_cli: Cli) -> None:
    out = sqlite_cli("run", "--once", ARCHIVER_BASE_URL="https://dashscope.aliyuncs.com/compatible-mode/v1")
    assert out.returncode == 2
    assert b"no API key" in out.stderr and b"archiver demo" in out.stderr


def test_bad_settings_are_clear_errors(sqlite_cli: Cli) -> None:
    out = sqlite_cli("run", "--once", ARCHIVER_CONCURRENCY="lots")
    assert out.returncode == 2 and b"ARCHIVER_CONCURRENCY" in out.stderr
    out = sqlite_cli("status", ARCHIVER_DATABASE_URL="mysql://x/y")
    assert out.returncode == 2 and b"unsupported database" in out.stderr


def test_demo_runs_end_to_end(sqlite_cli: Cli, tmp_path: Path) -> None:
    out = sqlite_cli("demo", "--count", "60", timeout=170)
    assert out.returncode == 0, out.stderr
    text = out.stdout.decode()
    assert "archived" in text and "responses per model" in text
    # Into demo.db, whatever ARCHIVER_DATABASE_URL says (see test_find_failures.py).
    demo = Cli({**sqlite_cli.env, "ARCHIVER_DATABASE_URL": "sqlite:///demo.db"}, tmp_path)
    assert status_json(demo)["states"]["pending"] == 0
