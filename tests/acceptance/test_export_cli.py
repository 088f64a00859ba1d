"""``archiver export`` end to end, as users run it (subprocesses, real database, mock API process).

The command is a thin wrapper over :func:`archiver.export.export`:

    archiver export OUT_DIR [--format jsonl|parquet|csv] [--cursor NAME] [--full] [--chunk-size N]

with ``ARCHIVER_EXPORT_FORMAT``, ``ARCHIVER_EXPORT_CURSOR`` and ``ARCHIVER_EXPORT_CHUNK_SIZE``
as the variables, printing the :class:`~archiver.export.ExportReport` as one JSON object on
stdout and exiting 1 with the message (no traceback) on an ExportError.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from .conftest import Cli

pytestmark = [
    pytest.mark.timeout(180),
]

FAST = {
    "ARCHIVER_BACKOFF_BASE": "0.01",
    "ARCHIVER_BACKOFF_CAP": "0.05",
    "ARCHIVER_REPOLL": "0.02",
    "ARCHIVER_POLL_INTERVAL": "0.05",
}
IDS = [f"resp_ok_x{i}" for i in range(12)] + ["resp_kitchensink_x", "resp_unicode_x"]


def archive(cli: Cli, mock: str, ids: list[str]) -> None:
    queued = cli("enqueue", input="\n".join(ids).encode() + b"\n")
    assert queued.returncode == 0, queued.stderr
    run = cli("run", "--once", ARCHIVER_BASE_URL=mock, **FAST)
    assert run.returncode == 0, run.stderr


def report(out: subprocess.CompletedProcess[bytes]) -> dict[str, Any]:
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def test_export_incremental_then_full(cli: Cli, mock_process: str, tmp_path: Path) -> None:
    archive(cli, mock_process, IDS)
    first = report(cli("export", "out", "--format", "parquet"))
    assert (first["batch"], first["responses"], first["full"]) == (1, len(IDS), False)
    assert "responses/default-00000001.parquet" in first["files"]
    table = pq.read_table(tmp_path / "out" / "responses" / "default-00000001.parquet")
    assert sorted(table.column("id").to_pylist()) == sorted(IDS)
    assert (tmp_path / "out" / "_schema.json").is_file()

    # Nothing new: nothing written, the batch stays.
    again = report(cli("export", "out", "--format", "parquet"))
    assert (again["batch"], again["responses"], again["files"]) == (1, 0, [])

    archive(cli, mock_process, ["resp_ok_y1", "resp_ok_y2"])
    second = report(cli("export", "out", "--format", "parquet"))
    assert (second["batch"], second["responses"]) == (2, 2)

    full = report(cli("export", "out", "--format", "parquet", "--full"))
    assert (full["batch"], full["responses"], full["full"]) == (3, len(IDS) + 2, True)


def test_export_reads_its_variables(cli: Cli, mock_process: str, tmp_path: Path) -> None:
    archive(cli, mock_process, IDS[:3])
    out = report(cli("export", "out", ARCHIVER_EXPORT_FORMAT="csv", ARCHIVER_EXPORT_CURSOR="bi"))
    assert out["cursor"] == "bi" and out["responses"] == 3
    assert (tmp_path / "out" / "responses" / "bi-00000001.csv").is_file()
    # The cursors are independent: the default one still has everything to export.
    jsonl = report(cli("export", "out"))
    assert (jsonl["cursor"], jsonl["responses"]) == ("default", 3)
    lines = (tmp_path / "out" / "responses" / "default-00000001.jsonl").read_bytes().splitlines()
    assert len(lines) == 3


def test_export_errors_are_messages(cli: Cli, tmp_path: Path) -> None:
    bad = cli("export", "out", "--cursor", "../escape")
    assert bad.returncode == 2
    assert b"--cursor='../escape': must be" in bad.stderr and b"Traceback" not in bad.stderr
    assert not (tmp_path / "out").exists()
    help_ = cli("export", "--help")
    assert help_.returncode == 0
    for variable in ("ARCHIVER_EXPORT_FORMAT", "ARCHIVER_EXPORT_CURSOR", "ARCHIVER_EXPORT_CHUNK_SIZE"):
        assert variable.encode() in help_.stdout
