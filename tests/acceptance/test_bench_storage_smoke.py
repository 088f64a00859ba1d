"""The storage benchmark runs end to end on a few bodies (it never asserts sizes)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STORAGE = REPO / "bench" / "storage.py"
PARTS = ("raw", "normalized", "indexes", "free", "other")


def test_storage_bench_prints_the_split_for_each_corpus(tmp_path: Path, corpus_dir: Path) -> None:
    few = tmp_path / "corpus"
    few.mkdir()
    for path in sorted(corpus_dir.glob("*.json"))[:5]:
        shutil.copy(path, few / path.name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARCHIVER_")}
    out = subprocess.run(
        [sys.executable, str(STORAGE), "--corpus", str(few), "--mock", "30",
         "--workdir", str(tmp_path / "w")],
        capture_output=True, text=True, timeout=110, env=env, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = out.stdout.split("storage summary", 1)[1].splitlines()
    header = next(line for line in summary if line.startswith("| database"))
    for part in PARTS:
        assert f"| {part} (ratio) " in header
    rows = [line for line in summary if line.startswith("| SQLite")]
    assert "corpus (5 real bodies) | 5 |" in rows[0] and "mock (30 bodies), summary | 30 |" in rows[-1]
    assert any("mock (30 bodies) | 30 |" in row for row in rows), out.stdout
    assert any("corpus (5 real bodies), summary | 5 |" in row for row in rows), out.stdout
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        total = int(cells[4].replace(",", ""))
        parts = [int(c.split(" ")[0].replace(",", "")) for c in cells[6:]]
        assert len(parts) == len(PARTS) and parts[0] > 0 and parts[1] > 0
        # The parts add up to the total (each rounded to a byte per response).
        assert abs(sum(parts) - total) <= len(PARTS), row
