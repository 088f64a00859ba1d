"""One ``archiver run`` serving every source: a :class:`~archiver.worker.Worker` per source.

Each source's worker claims only that source's rows and has its own HTTP session, key,
provider rules, concurrency, adaptive limit, circuit breaker and ``max_rps``; they share
the database engine, the writer (one writer process), the metrics and the stop signal.

A source whose key is refused, or whose endpoint is down, stops (``--once``) or pauses
(the daemon) only its own worker: the others go on. ``run --once`` then ends with the
exit status of the first source that stopped that way (3: key refused, 4: endpoint
down), after every other source drained. A worker that dies of anything else (the
database is gone, a task crashed) stops them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import fields

from sqlalchemy.ext.asyncio import AsyncEngine

from archiver.deadline import StopDeadline
from archiver.errors import ArchiverError, EndpointDown, StopRun
from archiver.logs import get_logger
from archiver.metrics import Metrics
from archiver.notify import SystemdNotifier
from archiver.queue import QueueStore
from archiver.settings import DEFAULT_SOURCE, Settings
from archiver.worker import RunSummary, Worker
from archiver.writer import BatchWriter, make_writer

__all__ = ["Runner", "owner_for"]

log = get_logger()


def owner_for(owner: str, source: str) -> str:
    """The lease owner of a source's worker: the process's for ``default``, else ``owner/source``."""
    return owner if source == DEFAULT_SOURCE else f"{owner}/{source}"


class Runner:
    """Runs one worker per source until all are drained (``once``) or stopped.

    Args:
        sources: the settings of each source served (:func:`archiver.sources.source_settings`).
        engine: the shared database.
        once: drain and exit.
        on_progress: called with the summary of all sources together.
        metrics: shared by every worker (``archiver_source_up`` is labelled by source).
        notifier: systemd notifications.
        writer_process: a writer process started early (see :class:`~archiver.worker.Worker`).
        deadline: started by :meth:`request_stop`; the shared writer is closed by it
            (default: the first source's grace period plus its final-write budget).
    """

    def __init__(
        self,
        sources: Mapping[str, Settings],
        engine: AsyncEngine,
        *,
        once: bool = False,
        on_progress: Callable[[RunSummary], None] | None = None,
        metrics: Metrics | None = None,
        notifier: SystemdNotifier | None = None,
        writer_process: subprocess.Popen[bytes] | None = None,
        deadline: StopDeadline | None = None,
    ) -> None:
        if not sources:
            raise ValueError("no source to serve")
        self.metrics = metrics or Metrics()
        self._on_progress = on_progress
        first = next(iter(sources.values()))
        shared: BatchWriter | None = None
        if len(sources) > 1:
            shared = make_writer(first, engine, first.writer, writer_process)
            writer_process = None
        self._writer = shared
        self.deadline = deadline or StopDeadline(first.grace_seconds + first.final_write_seconds)
        self._queue = QueueStore(engine)
        self.workers: dict[str, Worker] = {}
        for name, settings in sources.items():
            self.workers[name] = Worker(
                settings.with_changes(owner=owner_for(settings.owner, name)),
                engine,
                once=once,
                on_progress=self._progress if on_progress is not None else None,
                metrics=self.metrics,
                notifier=notifier,
                writer_process=writer_process,
                writer=shared,
            )
            writer_process = None  # the first worker's writer takes it (one source only)
            # A source stopped by its breaker says why while the others drain (--once).
            self.workers[name].hold_outlives_run = once and len(sources) > 1
        self._running = set(self.workers)
        self._all_ended = asyncio.Event()

    def request_stop(self, reason: str) -> None:
        """Stop every source's worker gracefully."""
        self.deadline.start()
        for worker in self.workers.values():
            worker.request_stop(reason)

    def is_live(self) -> bool:
        """Every worker is live (see :meth:`Worker.is_live`)."""
        return all(w.is_live() for w in self.workers.values())

    def is_healthy(self) -> bool:
        """For /healthz: every source's worker is live and its circuit breaker closed."""
        return all(w.is_healthy() for w in self.workers.values())

    def summary(self) -> RunSummary:
        """The summaries of every source added up."""
        total = RunSummary()
        for worker in self.workers.values():
            part = worker.summary
            for f in fields(RunSummary):
                value = getattr(part, f.name)
                if f.name == "peak_held_bytes":
                    total.peak_held_bytes += value
                elif f.name == "duration_s":
                    total.duration_s = max(total.duration_s, value)
                elif f.name == "stop_reason":
                    total.stop_reason = total.stop_reason or value
                elif f.name == "remaining":
                    total.remaining = value or total.remaining
                elif isinstance(value, int):
                    setattr(total, f.name, getattr(total, f.name) + value)
        return total

    def _progress(self, _part: RunSummary) -> None:
        assert self._on_progress is not None
        self._on_progress(self.summary())

    async def run(self) -> RunSummary:
        """Run every source; the combined summary.

        Raises:
            StopRun: a source's key was refused (``--once``); the other sources drained.
            EndpointDown: a source's endpoint was down (``--once``); the others drained.
            Exception: a worker died of anything else; every worker was stopped.
        """
        if len(self.workers) == 1:
            worker = next(iter(self.workers.values()))
            return await worker.run()
        if self._writer is not None:
            await self._writer.start()
        try:
            outcomes = await asyncio.gather(
                *(self._run_one(name, w) for name, w in self.workers.items()), return_exceptions=True
            )
        finally:
            if self._writer is not None:
                await self._writer.close(self.deadline)
        stopped: ArchiverError | None = None
        for outcome in outcomes:
            if isinstance(outcome, StopRun | EndpointDown):
                stopped = stopped or outcome
            elif isinstance(outcome, BaseException):
                raise outcome
        if stopped is not None:
            raise stopped
        summary = self.summary()
        with contextlib.suppress(Exception):  # each worker's count was taken before the others ended
            summary.remaining = await self._queue.counts()
        return summary

    async def _run_one(self, name: str, worker: Worker) -> RunSummary:
        try:
            return await worker.run()
        except (StopRun, EndpointDown) as exc:
            log.error("archiver.source_stopped", source=name, error=str(exc))
            self._ended(name)
            await worker.report_hold_until(self._all_ended)
            raise type(exc)(f"source {name!r}: {exc}") from None
        except BaseException:
            self.request_stop(f"source {name!r} failed")
            raise
        finally:
            self._ended(name)

    def _ended(self, name: str) -> None:
        self._running.discard(name)
        if not self._running:
            self._all_ended.set()
