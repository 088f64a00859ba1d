"""The benchmark harness runs end to end on a tiny input (it never asserts speed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RUN = REPO / "bench" / "run.py"
RATIO_LINES = ("ratio archiver/baseline:", "ratio archiver/floor:", "ratio archiver/bound:")


def _bench(
    tmp_path: Path, *extra: str, env: dict[str, str] | None = None, scenario: str = "cpu-bound"
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ARCHIVER_")}
    return subprocess.run(
        [sys.executable, str(RUN), "--quick", "--scenario", scenario, "--ids", "200", "--repeat", "1",
         "--workdir", str(tmp_path / "work"), *extra],
        capture_output=True, text=True, timeout=110, env={**base, **(env or {})}, check=False,
    )  # fmt: skip


def _assert_ran(out: subprocess.CompletedProcess[str]) -> list[str]:
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lines = out.stdout.splitlines()
    # Timed like a regular install: the package's bytecode is written before the first run.
    assert any(
        line.startswith("byte-compiled ") and line.endswith("(as a regular install is)") for line in lines
    )
    for prefix in RATIO_LINES:
        assert any(line.startswith(prefix) for line in lines), f"no {prefix!r} line in:\n{out.stdout}"
    # Correctness, not speed: every normalized row of every archived ID is there.
    rows = [line for line in lines if line.startswith("rows:")]
    assert rows and rows[-1].endswith("PASS"), out.stdout
    assert any(line.startswith("archiver ") for line in lines)
    assert any(line.startswith("floor ") for line in lines)
    return lines


def test_bench_runs_on_a_tiny_input(tmp_path: Path) -> None:
    lines = _assert_ran(_bench(tmp_path))
    baseline = next(line for line in lines if line.startswith("ratio archiver/baseline:"))
    skipped = any(line.startswith("baseline: skipped") for line in lines)
    # With openai installed the baseline has a figure; without it, the run says it was skipped.
    assert ("n/a (baseline skipped)" in baseline) == skipped


def test_bench_skips_the_baseline_without_openai(tmp_path: Path) -> None:
    fake = tmp_path / "no_openai" / "openai"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('openai hidden by the smoke test')\n")
    pythonpath = os.pathsep.join(p for p in (str(fake.parent), os.environ.get("PYTHONPATH", "")) if p)
    lines = _assert_ran(_bench(tmp_path, env={"PYTHONPATH": pythonpath}))
    assert any(line.startswith("baseline: skipped") for line in lines)
    assert "ratio archiver/baseline: n/a (baseline skipped)" in lines


def test_bench_latency_bound_reports_the_floor_against_the_bound(tmp_path: Path) -> None:
    lines = _assert_ran(_bench(tmp_path, "--no-baseline", scenario="latency-bound"))
    bound = next(line for line in lines if line.startswith("ratio archiver/bound:"))
    assert "(target >= 0.9:" in bound
    floor = [line for line in lines if line.startswith("info: floor/bound")]
    assert len(floor) == 1
    assert 0 < float(floor[0].rsplit(":", 1)[1]) <= 1.5
