"""What a command imports before its first line of work, and the progress display.

Every command pays for its imports before it does anything; ``run`` pays for them before
its first request (bench/README.md, "start-up"). These tests keep the modules that only
some runs need out of that path, and check that the places that do need them still work.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from archiver.logs import configure_logging
from archiver.progress import LOG_EVERY_S, Progress
from archiver.worker import RunSummary

# Needed only by a terminal (rich), a metrics server (aiohttp.web) or PostgreSQL.
OPTIONAL = ("rich", "aiohttp.web", "sqlalchemy.dialects.postgresql")


def _modules_after(code: str) -> set[str]:
    probe = textwrap.dedent(code) + "\nimport sys\nprint('\\n'.join(sys.modules))\n"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_what_run_imports_on_sqlite_leaves_out_the_optional_modules() -> None:
    loaded = _modules_after(
        """
        import archiver.cli, archiver.commands, archiver.progress, archiver.writer
        from archiver.progress import Progress
        Progress.for_stream(open("/dev/null", "w")).set_total(10)  # not a terminal: log lines
        """
    )
    assert "sqlalchemy" in loaded and "aiohttp" in loaded  # the probe did import the run path
    assert not [name for name in OPTIONAL if name in loaded]


def test_the_optional_modules_still_load_where_they_are_needed() -> None:
    loaded = _modules_after(
        """
        import archiver.logs, rich.console
        from sqlalchemy.dialects import postgresql
        from sqlalchemy.schema import CreateTable
        from archiver.schema import responses
        assert "error JSONB" in str(CreateTable(responses).compile(dialect=postgresql.dialect()))
        from archiver.metrics import Metrics, build_metrics_app
        build_metrics_app(Metrics())
        """
    )
    assert all(name in loaded for name in OPTIONAL)


def _stderr_of(code: str, *args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stderr


# One argument list per command: each must reach asyncio.run through cli._arun, or a
# long-running command (run, mock-server, export) would work with the collector off.
COMMAND_ARGS = {
    "enqueue": ["{ids}"],
    "run": ["--once", "--base-url", "http://127.0.0.1:9/v1"],
    "status": ["--json"],
    "show": ["resp_not_there"],
    "retry": [],
    "check": [],
    "migrate": [],
    "mock-server": ["--port", "0"],
    "demo": ["--count", "1"],
    "export": ["{out}"],
    "renormalize": ["--all"],
    "compact": [],
}


def test_every_command_is_covered_by_the_collector_check() -> None:
    from archiver.cli import _HANDLERS

    assert set(COMMAND_ARGS) == set(_HANDLERS)


@pytest.mark.parametrize("command", sorted(COMMAND_ARGS))
def test_every_command_starts_its_work_with_the_collector_on(command: str, tmp_path: Path) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("resp_a\n")
    args = [a.format(ids=ids, out=tmp_path / "out") for a in COMMAND_ARGS[command]]
    code = """
        import asyncio, gc, os, sys
        from archiver import cli

        def spy(main, **kwargs):
            # The state when the command's work would start; then stop right there.
            main.close()
            print("enabled", gc.isenabled(), "frozen", gc.get_freeze_count(), file=sys.stderr, flush=True)
            os._exit(0)

        asyncio.run = spy
        sys.argv = ["archiver", *sys.argv[1:]]
        cli.console()
        """
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARCHIVER_")}
    env["ARCHIVER_DATABASE_URL"] = f"sqlite:///{tmp_path / 'a.db'}"
    err = _stderr_of(code, command, *args, env=env)
    words = err.split()
    assert words[:2] == ["enabled", "True"], err
    # Everything the command imported (SQLAlchemy among it) was frozen: tens of thousands.
    assert words[2] == "frozen" and int(words[3]) > 20_000, err


def test_release_without_hold_leaves_a_library_users_collector_alone() -> None:
    err = _stderr_of(
        """
        import gc, sys
        from archiver import heap

        heap.release()  # the library path: nothing held
        print(gc.isenabled(), gc.get_freeze_count(), file=sys.stderr)
        gc.disable()  # the embedder's own choice survives hold/release
        heap.hold()
        heap.release()
        print(gc.isenabled(), gc.get_freeze_count(), file=sys.stderr)
        gc.enable()
        heap.hold()
        held = gc.isenabled()
        heap.release()
        heap.release()  # a second release changes nothing
        print(held, gc.isenabled(), gc.get_freeze_count() > 0, file=sys.stderr)
        """
    )
    assert err.split("\n")[:3] == ["True 0", "False 0", "False True True"], err


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_progress_draws_a_bar_with_counts() -> None:
    screen = _Terminal()
    progress = Progress.for_stream(screen)
    progress.set_total(10)
    progress(RunSummary(archived=6, failed=1))
    progress.close()
    shown = screen.getvalue()
    assert "archiving" in shown and "7/10" in shown and "failed 1" in shown


def test_off_a_terminal_progress_logs_a_line_every_interval() -> None:
    out = io.StringIO()
    configure_logging("info", stream=out, json=True)
    progress = Progress.for_stream(io.StringIO())
    progress.set_total(10)
    progress(RunSummary(archived=3))
    assert out.getvalue() == ""  # not yet: the first line comes after LOG_EVERY_S
    progress._last_log -= LOG_EVERY_S
    progress(RunSummary(archived=3))
    line = json.loads(out.getvalue())
    assert (line["event"], line["done"], line["total"]) == ("archiver.progress", 3, 10)
