"""renormalize and compact on a terminal: a progress bar, then one summary line; off a terminal, no bar."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .conftest import Cli
from .test_cli import FAST
from .test_terminal import pieces, run_in_terminal

pytestmark = pytest.mark.timeout(240)

IDS = [f"resp_ok_b{i:04d}" for i in range(300)]
BAR = re.compile(r"^\s*(renormalizing|compacting)\b.*?(\d+)/(\d+)")


def test_renormalize_shows_a_bar_on_a_terminal_and_a_summary_line(sqlite_cli: Cli, mock_process: str) -> None:
    assert sqlite_cli("enqueue", input="\n".join(IDS).encode()).returncode == 0
    assert sqlite_cli("run", "--once", ARCHIVER_BASE_URL=mock_process, **FAST).returncode == 0
    status, screen = run_in_terminal(sqlite_cli, "renormalize", "--all", "--batch-size", "20")
    assert status == 0, screen
    drawn = pieces(screen)
    bars = [BAR.search(p) for p in drawn if BAR.search(p)]
    assert bars and bars[-1].groups() == ("renormalizing", "300", "300"), drawn[:20]  # type: ignore[union-attr]
    assert any(p.startswith("renormalized 300 of 300 responses in ") for p in drawn), drawn[-5:]
    status, screen = run_in_terminal(sqlite_cli, "compact")
    assert status == 0, screen
    assert any(p.startswith("compacted 0 of 0 responses") for p in pieces(screen)), screen[-2000:]
    # Off a terminal: the summary line only.
    plain = sqlite_cli("renormalize", "resp_ok_b0001")
    assert plain.returncode == 0 and plain.stderr == b""
    assert plain.stdout.decode().startswith("renormalized 1 of 1 responses in ")


def test_renormalize_without_a_scope_is_exit_2_and_touches_nothing(sqlite_cli: Cli, tmp_path: Path) -> None:
    cases = {
        ("renormalize",): "say what to renormalize: IDs, --all, or --since TIME",
        ("renormalize", "--since", "soon"): "--since 'soon' is not a time",
        ("renormalize", "--all", "--since", "7d"): "exactly one of them",
        ("renormalize", "--all", "--normalize", "brief"): "invalid one_of value"
        if False
        else "must be one of",
    }
    for args, message in cases.items():
        done = sqlite_cli(*args)
        assert done.returncode == 2, done.stderr
        assert message in done.stderr.decode() and b"Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "archive.db").exists()
