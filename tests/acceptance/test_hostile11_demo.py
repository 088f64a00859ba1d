"""``archiver demo`` in the shell of an operator whose production settings are exported
(``set -a; . /etc/archiver/archiver.env``): the demo runs against its own mock and
``demo.db``, so the variables of the real archive must not change what it shows."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from .conftest import Cli, base_env

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize(
    "variable",
    [
        pytest.param({"ARCHIVER_SOURCE": "openai-proj-a"}, id="source"),
        pytest.param({"ARCHIVER_BASE_URL": "http://gateway.internal/v1"}, id="plain-http-base-url"),
        pytest.param({"ARCHIVER_MAX_RPS": "0.5"}, id="max-rps"),
    ],
)
def test_the_demo_ignores_the_real_archives_variables(tmp_path: Path, variable: dict[str, str]) -> None:
    cli = Cli({**base_env(), **variable}, tmp_path)
    started = time.monotonic()
    done = cli("demo", "--count", "30", timeout=100)
    took = time.monotonic() - started
    out, err = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 0, err
    summary = json.loads(out.split("run summary: ")[1].split("\n\nthe archive is in")[0])
    with sqlite3.connect(tmp_path / "demo.db") as conn:
        pending = conn.execute("SELECT count(*) FROM archive_queue WHERE state = 'pending'").fetchone()[0]
    assert summary["archived"] >= 25 and pending == 0, (summary, pending)
    assert took < 30, f"the demo took {took:.0f} s"
