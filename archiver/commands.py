"""What each CLI command does, as async functions over Settings (the CLI only parses flags)."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, TextIO

import orjson

from archiver.db import (
    head_revision,
    open_database,
    redact_url,
)
from archiver.db import (
    migrate as migrate_db,
)
from archiver.health import CheckResult, run_checks
from archiver.ids import IdLine, RejectedLine, parse_id_lines, validate_response_id
from archiver.metrics import Metrics, queue_gauge_loop, start_metrics_server
from archiver.notify import SystemdNotifier
from archiver.queue import QUEUE_STATES, EnqueueCounts, QueueStore
from archiver.redaction import redact, redact_value
from archiver.settings import Settings
from archiver.store import ArchiveStore
from archiver.worker import RunSummary, Worker
from archiver.workers import worker_lines

ENQUEUE_BATCH = 20_000


@dataclass(slots=True)
class EnqueueReport:
    """Totals of one ``enqueue`` call."""

    queued: int = 0
    already_known: int = 0
    requeued: int = 0
    rejected: int = 0
    missing_files: int = 0

    def add(self, counts: EnqueueCounts) -> None:
        """Fold one chunk's counts in."""
        self.queued += counts.queued
        self.already_known += counts.already_known
        self.requeued += counts.requeued


def _open_sources(
    paths: Sequence[str], err: TextIO, report: EnqueueReport
) -> Iterator[tuple[str, Iterable[str]]]:
    if not paths:
        yield "<stdin>", io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace")
        return
    for path in paths:
        if path == "-":
            yield "<stdin>", io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace")
            continue
        try:
            handle = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115 - closed below
        except OSError as exc:
            report.missing_files += 1
            print(f"archiver: cannot read {path}: {exc.strerror}", file=err)
            continue
        with handle:
            yield path, handle


async def enqueue(
    settings: Settings, paths: Sequence[str], *, refetch: bool = False, err: TextIO = sys.stderr
) -> EnqueueReport:
    """Queue the IDs in ``paths`` (stdin when empty); report bad lines on ``err`` with line numbers."""
    report = EnqueueReport()
    async with open_database(settings.database_url) as engine:
        queue = QueueStore(engine)
        batch: list[str] = []
        created: list[float | None] = []
        for name, lines in _open_sources(paths, err, report):
            for parsed in parse_id_lines(lines):
                if isinstance(parsed, IdLine):
                    batch.append(parsed.response_id)
                    created.append(parsed.created_at)
                    if len(batch) >= ENQUEUE_BATCH:
                        report.add(await queue.enqueue(batch, refetch=refetch, created_at=created))
                        batch, created = [], []
                elif isinstance(parsed, RejectedLine):
                    report.rejected += 1
                    print(
                        redact(f"{name}:{parsed.line_no}: rejected: {parsed.reason}: {parsed.text!r}"),
                        file=err,
                    )
        if batch:
            report.add(await queue.enqueue(batch, refetch=refetch, created_at=created))
    return report


async def run(
    settings: Settings,
    *,
    once: bool,
    progress: Any = None,
    writer_process: subprocess.Popen[bytes] | None = None,
) -> RunSummary:
    """The pipeline (daemon or backfill). See :class:`archiver.worker.Worker`.

    ``writer_process``: a writer process the caller started early and still owns.
    """
    from archiver.signals import on_stop_signals

    async with open_database(settings.database_url, pool_size=4) as engine:
        if progress is not None:
            counts = await QueueStore(engine).counts()
            progress.set_total(counts["pending"] + counts["in_flight"])
        metrics = Metrics()
        worker = Worker(
            settings,
            engine,
            once=once,
            on_progress=progress,
            metrics=metrics,
            notifier=SystemdNotifier.from_env(),
            writer_process=writer_process,
        )
        async with AsyncExitStack() as stack:
            if settings.metrics_port is not None:
                await _serve_metrics(stack, settings, metrics, worker, QueueStore(engine))
            with on_stop_signals(worker.request_stop):
                return await worker.run()
    raise AssertionError("unreachable")


async def _serve_metrics(
    stack: AsyncExitStack, settings: Settings, metrics: Metrics, worker: Worker, queue: QueueStore
) -> None:
    """Start /metrics and /healthz, and a task refreshing the queue gauges."""
    server = await start_metrics_server(
        metrics, settings.metrics_host, settings.metrics_port or 0, is_live=worker.is_healthy
    )
    stack.push_async_callback(server.close)
    stop = asyncio.Event()

    async def near_expiry() -> int:
        if settings.retention_s is None:
            return 0
        return (await queue.expiry_counts(settings.retention_s))[0]

    task = asyncio.create_task(
        queue_gauge_loop(metrics, queue, settings.metrics_refresh, stop, near_expiry=near_expiry),
        name="archiver.queue-gauges",
    )

    async def stop_task() -> None:
        stop.set()
        await task

    stack.push_async_callback(stop_task)


async def status(settings: Settings) -> dict[str, Any]:
    """Counts per state, oldest pending age, expired leases, recent errors.

    Every string is redacted (:func:`archiver.redaction.redact_value`): the errors were
    redacted before they were stored, and this masks rows stored before a secret was known.
    """
    async with open_database(settings.database_url) as engine:
        details = await QueueStore(engine).status_details(retention_s=settings.retention_s)
    details["database"] = redact_url(settings.database_url.strip())  # as the user wrote it, no password
    redacted: dict[str, Any] = redact_value(details)
    return redacted


async def show(settings: Settings, response_id: str) -> bytes | None:
    """The archived raw body of one ID, or None."""
    validate_response_id(response_id)
    async with open_database(settings.database_url) as engine:
        return await ArchiveStore(engine).raw_body(response_id)


async def retry(settings: Settings, states: Sequence[str], response_ids: Sequence[str]) -> int:
    """Move failed/not_found rows back to pending; returns how many moved."""
    for rid in response_ids:
        validate_response_id(rid)
    async with open_database(settings.database_url) as engine:
        return await QueueStore(engine).retry(states, response_ids or None)


async def migrate(settings: Settings) -> str | None:
    """Bring the schema to head; returns the head revision."""
    async with open_database(settings.database_url, upgrade=False) as engine:
        await migrate_db(engine)
    return head_revision()


async def check(settings: Settings, *, max_pending_age_s: float, max_expired_leases: int) -> CheckResult:
    """Health check for monitoring and ExecStartPre: reachable, schema current, queue moving."""
    return await run_checks(
        settings.database_url, max_pending_age_s=max_pending_age_s, max_expired_leases=max_expired_leases
    )


def format_status(details: dict[str, Any]) -> str:
    """A readable status table."""
    lines = [f"database: {details['database']}", ""]
    width = max(len(s) for s in QUEUE_STATES)
    for state in QUEUE_STATES:
        lines.append(f"  {state:<{width}}  {details['states'][state]:>10,}")
    lines.append(f"  {'total':<{width}}  {details['total']:>10,}")
    lines.append("")
    lines.extend(_health_lines(details))
    if details["recent_errors"]:
        lines.append("recent errors:")
        for e in details["recent_errors"]:
            code = e["status_code"] if e["status_code"] is not None else "-"
            lines.append(
                f"  {e['response_id']}  {e['state']}  attempts={e['attempts']}  status={code}  {e['error']}"
            )
    return "\n".join(lines)


def _health_lines(details: dict[str, Any]) -> list[str]:
    """Oldest pending age, expired leases and expiry risk, one line each."""
    age = details["oldest_pending_age_s"]
    lines = [
        f"oldest pending: {_human_age(age) if age is not None else '-'}",
        f"expired leases: {details['expired_leases']}",
    ]
    if details.get("retention_days"):
        lines.append(
            f"expiry (provider keeps {details['retention_days']:g} days): "
            f"{details['pending_near_expiry']} pending within a day of expiry, "
            f"{details['pending_past_retention']} past it"
        )
    lines.extend(worker_lines(details))
    return lines


def print_status_table(details: dict[str, Any]) -> None:
    """The status as rich tables, for a terminal."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"database: {details['database']}")
    states = Table(show_header=True)
    states.add_column("state")
    states.add_column("rows", justify="right")
    for state in QUEUE_STATES:
        states.add_row(state, f"{details['states'][state]:,}")
    states.add_row("total", f"{details['total']:,}", style="bold")
    console.print(states)
    for line in _health_lines(details):
        console.print(line)
    if details["recent_errors"]:
        errors = Table(title="recent errors")
        for column in ("response_id", "state", "attempts", "status", "error"):
            errors.add_column(column)
        for e in details["recent_errors"]:
            code = str(e["status_code"]) if e["status_code"] is not None else "-"
            errors.add_row(e["response_id"], e["state"], str(e["attempts"]), code, e["error"])
        console.print(errors)


def _human_age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def dumps(value: Any) -> str:
    """JSON text for command output."""
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()


async def export(
    settings: Settings, out_dir: str, *, fmt: str, cursor: str, full: bool, chunk_size: int
) -> Any:
    """One export batch (see :func:`archiver.export.export`)."""
    from pathlib import Path

    from archiver.export import export as export_batch

    async with open_database(settings.database_url) as engine:
        return await export_batch(
            engine,
            Path(out_dir),
            fmt=fmt,  # type: ignore[arg-type]  # argparse choices
            cursor=cursor,
            full=full,
            chunk_size=chunk_size,
        )
