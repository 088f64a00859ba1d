"""What a command imports before its first line of work, and the progress display.

Every command pays for its imports before it does anything; ``run`` pays for them before
its first request (bench/README.md, "start-up"). These tests keep the modules that only
some runs need out of that path, and check that the places that do need them still work.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap

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
