"""What each CLI command does, as async functions over Settings (the CLI only parses flags)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from archiver.db import open_database
from archiver.dburl import redact_url
from archiver.deadline import StopDeadline, exit_at_deadline
from archiver.errors import DatabaseVanished, InvalidResponseId, NotArchived
from archiver.health import CheckResult, run_checks
from archiver.ids import validate_response_id
from archiver.ingest import EnqueueReport, enqueue_inputs, follow_file
from archiver.logs import get_logger
from archiver.migrate import head_revision
from archiver.migrate import migrate as migrate_db
from archiver.output import dumps as dumps  # re-exported, with the two below (tests use them)
from archiver.output import format_status as format_status
from archiver.output import source_lines as source_lines
from archiver.queue import QUEUE_STATES, QueueEntry, QueueStore, shown_name
from archiver.redaction import redact, redact_value
from archiver.settings import Settings
from archiver.sources import SourceRouting
from archiver.store import ArchiveStore
from archiver.transactions import statement_at_a_time

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from archiver.compact import CompactResult
    from archiver.ingest_http import IngestSecrets
    from archiver.metrics import Metrics
    from archiver.progress import WorkProgress
    from archiver.rebuild import RebuildReport
    from archiver.renormalize import RenormalizeResult
    from archiver.runner import Runner
    from archiver.worker import RunSummary


async def enqueue(
    settings: Settings,
    paths: Sequence[str],
    *,
    refetch: bool = False,
    follow: str | None = None,
    err: TextIO = sys.stderr,
    routing: SourceRouting | None = None,
) -> EnqueueReport:
    """Queue the IDs in ``paths`` (stdin when empty), or follow the log ``follow``.

    Bad lines are reported on ``err`` with line numbers. See :mod:`archiver.ingest`.
    ``routing``: each ID's source (default: ``settings.source``, any name accepted).
    """
    routing = routing or SourceRouting(settings.source)
    deadline = StopDeadline(settings.final_write_seconds)
    with exit_at_deadline(deadline):
        async with open_database(settings.database_url, deadline=deadline) as engine:
            queue = QueueStore(engine)
            if follow is not None:
                return await follow_file(
                    queue, follow, refetch=refetch, err=err, routing=routing, deadline=deadline
                )
            return await enqueue_inputs(
                queue, paths, refetch=refetch, err=err, routing=routing, deadline=deadline
            )


async def run(
    settings: Settings,
    *,
    once: bool,
    progress: Any = None,
    writer_process: subprocess.Popen[bytes] | None = None,
    sources: Mapping[str, Settings] | None = None,
) -> RunSummary:
    """The pipeline (daemon or backfill) for every source. See :class:`archiver.runner.Runner`.

    ``writer_process``: a writer process the caller started early and still owns.
    ``sources``: the settings of each source served (default: ``settings`` as the one
    source ``default``).
    """
    from archiver.ingest_http import load_ingest_secrets

    sources = sources or {settings.source: settings}
    # A bad file stops the start, before the database.
    ingest_secrets = load_ingest_secrets(settings, sources)
    deadline = StopDeadline(settings.grace_seconds + settings.final_write_seconds)
    with exit_at_deadline(deadline):
        return await _run_sources(settings, once, progress, writer_process, sources, ingest_secrets, deadline)


async def _run_sources(
    settings: Settings,
    once: bool,
    progress: Any,
    writer_process: subprocess.Popen[bytes] | None,
    sources: Mapping[str, Settings],
    ingest_secrets: IngestSecrets,
    deadline: StopDeadline,
) -> RunSummary:
    # Imported here: the pipeline (aiohttp's client and server, prometheus) is a tenth of a
    # second of imports that status, show, retry, export and the rest never use.
    from archiver.metrics import Metrics
    from archiver.notify import SystemdNotifier
    from archiver.runner import Runner
    from archiver.signals import on_stop_signals

    async with open_database(
        settings.database_url,
        pool_size=4 + len(sources),
        deadline=deadline,
        idle_in_transaction_s=settings.lease_seconds,
    ) as engine:
        if settings.normalize is not None:
            await _settle_normalize_mode(engine, settings.normalize)
        await _check_projection(engine)
        if progress is not None:
            waiting = await QueueStore(engine).waiting_by_source()
            progress.set_total(sum(n for name, n in waiting.items() if name in sources))
        metrics = Metrics()
        runner = Runner(
            sources,
            engine,
            once=once,
            on_progress=progress,
            metrics=metrics,
            notifier=SystemdNotifier.from_env(),
            writer_process=writer_process,
            deadline=deadline,
        )
        vanished: list[str] = []

        def on_vanished(message: str) -> None:
            # A push found the archive file gone: stop, and fail like a run that found it.
            vanished.append(message)
            runner.request_stop("the archive file was deleted or replaced")

        async with AsyncExitStack() as stack:
            if settings.metrics_port is not None:
                await _serve_metrics(
                    stack, settings, metrics, runner, QueueStore(engine), ingest_secrets, on_vanished
                )
            with on_stop_signals(runner.request_stop):
                try:
                    summary = await runner.run()
                except Exception:
                    if vanished:  # a task of the run met the same missing file first
                        raise DatabaseVanished(vanished[0]) from None
                    raise
        if vanished:
            raise DatabaseVanished(vanished[0])
        return summary


async def _settle_normalize_mode(engine: AsyncEngine, wanted: str) -> str:
    """Record ``--normalize`` in a new archive; refuse one that differs from the archive's."""
    from archiver.projection import settle_mode_sync

    async with engine.begin() as conn:
        mode: str = await conn.run_sync(settle_mode_sync, wanted)
    return mode


async def _check_projection(engine: AsyncEngine) -> None:
    """Record this archiver's projection version in a new archive; warn when rows are older."""
    from archiver.projection import archive_facts_sync, record_projection_sync

    async with statement_at_a_time(engine) as conn:
        facts = await conn.run_sync(archive_facts_sync)
    if facts["projection_version"] is None:
        async with engine.begin() as conn:
            await conn.run_sync(lambda c: record_projection_sync(c, only_if_new=True))
    elif facts["renormalize_needed"]:
        get_logger().warning(
            "archiver.renormalize_needed",
            projection=facts["projection_version"],
            current=facts["projection_current"],
            hint="some normalized rows were built by an older archiver: run `archiver renormalize --all`",
        )


async def renormalize(
    settings: Settings,
    response_ids: Sequence[str],
    *,
    everything: bool,
    since: str | None,
    progress: WorkProgress | None = None,
) -> RenormalizeResult:
    """Rebuild the normalized rows from ``raw`` (see :mod:`archiver.renormalize`)."""
    from archiver.rebuild import StopFlag
    from archiver.renormalize import check_scope
    from archiver.renormalize import renormalize as rebuild
    from archiver.signals import on_stop_signals

    check_scope(response_ids, everything=everything, since=since)  # before touching the database
    stop = StopFlag(settings.final_write_seconds)
    async with _rebuild_database(settings, stop.deadline, "renormalize") as engine:
        with on_stop_signals(stop), exit_at_deadline(stop.deadline):
            return await rebuild(
                engine,
                ids=response_ids,
                everything=everything,
                since=since,
                mode=settings.normalize,
                batch_size=settings.batch_size,
                max_batch_bytes=_batch_bytes(settings),
                on_start=progress.start if progress is not None else None,
                on_batch=_show_progress(progress),
                stop=stop,
            )
    raise AssertionError("unreachable")


@asynccontextmanager
async def _rebuild_database(
    settings: Settings, deadline: StopDeadline, command: str
) -> AsyncIterator[AsyncEngine]:
    """The archive a rebuild works on, with the rebuild lock held (see :mod:`archiver.rebuild_lock`)."""
    from archiver.rebuild_lock import exclusive_rebuild

    async with (
        open_database(
            settings.database_url,
            create=False,
            deadline=deadline,
            idle_in_transaction_s=settings.lease_seconds,
        ) as engine,
        exclusive_rebuild(engine, command),
    ):
        yield engine


async def compact(settings: Settings, *, vacuum: bool, progress: WorkProgress | None = None) -> CompactResult:
    """Re-encode old bodies, rebuild their rows, give space back (see :mod:`archiver.compact`)."""
    from archiver.compact import compact as run_compact
    from archiver.rebuild import StopFlag
    from archiver.signals import on_stop_signals

    stop = StopFlag(settings.final_write_seconds)
    async with _rebuild_database(settings, stop.deadline, "compact") as engine:
        with on_stop_signals(stop), exit_at_deadline(stop.deadline):
            return await run_compact(
                engine,
                batch_size=settings.batch_size,
                max_batch_bytes=_batch_bytes(settings),
                vacuum=vacuum,
                on_start=progress.start if progress is not None else None,
                on_batch=_show_progress(progress),
                stop=stop,
            )
    raise AssertionError("unreachable")


def _batch_bytes(settings: Settings) -> int:
    """Bodies per rebuild transaction: an eighth of --max-held-mb, as a write batch of run."""
    return max(int(settings.max_held_mb * (1 << 20) / 8), 1)


def _show_progress(progress: WorkProgress | None) -> Callable[[RebuildReport], None] | None:
    if progress is None:
        return None

    def show(report: RebuildReport) -> None:
        progress.update(report.done, report.detail())

    return show


async def _serve_metrics(
    stack: AsyncExitStack,
    settings: Settings,
    metrics: Metrics,
    runner: Runner,
    queue: QueueStore,
    ingest_secrets: IngestSecrets,
    on_vanished: Callable[[str], None],
) -> None:
    """Start /metrics, /healthz and the push ingestion routes, and a task refreshing the queue gauges."""
    from archiver.ingest_http import ingest_routes
    from archiver.metrics import queue_gauge_loop, start_metrics_server

    server = await start_metrics_server(
        metrics,
        settings.metrics_host,
        settings.metrics_port or 0,
        is_live=runner.is_healthy,
        routes=ingest_routes(queue, ingest_secrets, on_vanished=on_vanished) if ingest_secrets.any else (),
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


async def status(
    settings: Settings,
    *,
    error_states: Sequence[str] | None = None,
    limit: int = 10,
    served_sources: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Counts per state, oldest pending age, expired leases, recent errors.

    Args:
        settings: the database to read.
        error_states: list the errors of rows in these states (default failed, then
            not_found, then pending; see :meth:`QueueStore.status_details`).
        limit: how many errors to list.
        served_sources: the sources the config serves, to report rows of other sources.

    Every string is redacted (:func:`archiver.redaction.redact_value`): the errors were
    redacted before they were stored, and this masks rows stored before a secret was known.
    """
    from archiver.projection import archive_facts_sync

    async with open_database(settings.database_url, create=False) as engine:
        details = await QueueStore(engine).status_details(
            recent_errors=limit,
            retention_s=settings.retention_s,
            error_states=error_states,
            served_sources=served_sources,
        )
        async with statement_at_a_time(engine) as conn:
            details["archive"] = await conn.run_sync(archive_facts_sync)
    details["database"] = redact_url(settings.database_url.strip())  # as the user wrote it, no password
    redacted: dict[str, Any] = redact_value(details)
    return redacted


async def show(settings: Settings, response_id: str) -> bytes:
    """The archived raw body of one ID.

    Raises:
        NotArchived: the ID is not archived; the message says where it stands in the queue.
    """
    validate_response_id(response_id)
    async with open_database(settings.database_url, create=False) as engine:
        raw = await ArchiveStore(engine).raw_body(response_id)
        if raw is not None:
            return raw
        entry = (await QueueStore(engine).entries([response_id])).get(response_id)
    raise NotArchived(redact(not_archived_message(response_id, entry)))


def not_archived_message(response_id: str, entry: QueueEntry | None) -> str:
    """Why ``show`` has nothing: the ID's state and last error, or that it is not queued."""
    if entry is None:
        return f"{response_id} is not archived and not in the queue"
    code = f", status {entry.last_status_code}" if entry.last_status_code is not None else ""
    error = f": {entry.last_error}" if entry.last_error else ""
    return (
        f"{response_id} is not archived: {_state_said(entry.state)} (attempts {entry.attempts}{code}){error}"
    )


def _state_said(state: str) -> str:
    """A queue state as a message says it: one another program wrote is named as unknown,
    quoted and cut when it is not short printable text (never a terminal escape)."""
    if state in QUEUE_STATES:
        return state
    return f"unknown state {shown_name(state)} (no archiver command takes or moves it)"


@dataclass(slots=True)
class RetryReport:
    """What ``retry`` did: how many rows moved, and why the others did not."""

    moved: int = 0
    not_moved: list[tuple[str, str]] = field(default_factory=list)
    """(ID, reason) for each ID given that did not move."""
    rejected: list[str] = field(default_factory=list)
    """Why each invalid ID given was refused (as ``enqueue`` rejects a line)."""
    nothing_reason: str | None = None
    """Why nothing moved, for a retry by state only."""


def _why_not_moved(entry: QueueEntry | None, states: Sequence[str]) -> str:
    if entry is None:
        return "not in the queue"
    reasons = {
        "archived": "already archived",
        "in_flight": "in flight (a worker is fetching it)",
        "pending": "already pending",
    }
    if entry.state not in QUEUE_STATES:
        return _state_said(entry.state)
    return reasons.get(entry.state, f"{entry.state}, not in --state {' / '.join(states)}")


async def retry(settings: Settings, states: Sequence[str], response_ids: Sequence[str]) -> RetryReport:
    """Move failed/not_found rows (all, or only ``response_ids``) back to pending.

    Returns:
        how many moved, and for each given ID that did not, why (not in the queue,
        already archived, in flight, already pending, or in a state not asked for); for
        a retry by state that moved nothing, ``nothing_reason``. An invalid ID is
        reported in ``rejected`` and the valid ones still move; when every ID given is
        invalid nothing moves.
    """
    report = RetryReport()
    valid: list[str] = []
    for rid in dict.fromkeys(response_ids):
        try:
            valid.append(validate_response_id(rid))
        except InvalidResponseId as exc:
            report.rejected.append(str(exc))
    if response_ids and not valid:
        return report  # never a retry by state: the IDs given were all refused
    async with open_database(settings.database_url, create=False) as engine:
        queue = QueueStore(engine)
        entries = await queue.entries(valid) if valid else {}
        report.moved = await queue.retry(states, valid or None)
    for rid in valid:
        entry = entries.get(rid)
        if entry is None or entry.state not in states:
            report.not_moved.append((rid, _why_not_moved(entry, states)))
    if not response_ids and not report.moved:
        report.nothing_reason = f"no {' or '.join(states)} rows"
    return report


async def migrate(settings: Settings) -> str | None:
    """Bring the schema to head; returns the head revision."""
    async with open_database(settings.database_url, upgrade=False) as engine:
        await migrate_db(engine)
    return head_revision()


async def check(
    settings: Settings,
    *,
    max_pending_age_s: float,
    max_expired_leases: int,
    served_sources: Sequence[str] | None = None,
) -> CheckResult:
    """Health check for monitoring and ExecStartPre: reachable, schema current, queue moving,
    every source with waiting rows served (``served_sources``)."""
    return await run_checks(
        settings.database_url,
        max_pending_age_s=max_pending_age_s,
        max_expired_leases=max_expired_leases,
        served_sources=served_sources,
    )


async def export(
    settings: Settings, out_dir: str, *, fmt: str, cursor: str, full: bool, chunk_size: int
) -> Any:
    """One export batch (see :func:`archiver.export.export`)."""

    from archiver.export import ExportError, _check_arguments
    from archiver.export import export as export_batch

    _check_arguments(fmt, cursor, chunk_size)  # a bad cursor name touches nothing
    target = _export_directory(out_dir)
    async with open_database(settings.database_url, create=False) as engine:
        try:
            return await export_batch(
                engine,
                target,
                fmt=fmt,  # type: ignore[arg-type]  # argparse choices
                cursor=cursor,
                full=full,
                chunk_size=chunk_size,
            )
        except OSError as exc:  # a full disk, a directory made read-only meanwhile
            name = exc.filename or out_dir
            raise ExportError(f"cannot export into {out_dir}: {name}: {exc.strerror or exc}") from None


def _export_directory(out_dir: str) -> Path:
    """The export's output directory; one line when it cannot be written into.

    Checked before the database is opened, so a typo costs nothing; nothing is created
    here (the export makes the directory once its arguments passed).
    """
    from archiver.export import ExportError

    target = Path(out_dir)
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "it is" if existing == target else f"{existing} is"
        raise ExportError(f"cannot export into {out_dir}: {where} a file, not a directory")
    if not os.access(existing, os.W_OK):  # as root too: a read-only file system says no
        raise ExportError(f"cannot export into {out_dir}: {existing} is not writable")
    return target
