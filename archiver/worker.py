"""The pipeline: Claimer -> Fetchers (N) -> Writer, plus a lease heartbeat.

One ``Worker.run()`` serves the daemon (``once=False``: poll forever) and the backfill
(``once=True``: drain and exit). Stopping is one ``asyncio.Event``: the claimer stops,
claimed-but-unstarted rows are released at once, in-flight fetches get ``grace_seconds``
to finish and be written, and whatever is left is released without spending an attempt.
Both periods count from the stop request, and database work ends by the stop deadline,
``final_write_seconds`` after the grace period (:mod:`archiver.deadline`): rows not written
or released by then keep their lease, for the next claim after it expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import subprocess
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from archiver import __version__
from archiver.breaker import Breaker, Trip, proves_endpoint
from archiver.budget import ByteBudget
from archiver.client import ResponsesClient
from archiver.db_faults import db_error_message
from archiver.db_retry import log_db_retry, with_db_retry
from archiver.dburl import redact_url
from archiver.deadline import StopDeadline, StopDeadlinePassed
from archiver.errors import ArchiverError, EndpointDown, StopRun
from archiver.fetch import Fetcher
from archiver.fleet_rate import FleetRate
from archiver.holds import Hold, hold_kind
from archiver.limits import AdaptiveLimit
from archiver.logs import get_logger, redact
from archiver.metrics import Metrics
from archiver.notify import SystemdNotifier, watchdog_loop
from archiver.outcomes import Outcome, Permanent, Retry, StopAll, held_bytes
from archiver.policy import (
    ProviderProfile,
    RetryPolicy,
    refused_for_one_id,
)
from archiver.queue import Job, QueueStore
from archiver.redaction import register_database_url, register_secret
from archiver.settings import Settings, display_base_url
from archiver.store import OUTCOME_COUNTS, FetchResult, WriteReport
from archiver.workers import HEALTH_REFRESH_S, forget_worker, record_worker
from archiver.writer import BatchWriter, make_writer

log = get_logger()

WRITE_LINGER_S = 0.02
MB = 1 << 20
BATCH_SHARE_OF_HELD = 8  # a write batch closes at this fraction of --max-held-mb
EXPIRY_CHECK_INTERVAL_S = 600.0
LIVENESS_TIMEOUT_S = 120.0


@dataclass(slots=True)
class RunSummary:
    """What one run did. ``stop_reason`` is None for a normal end.

    ``archived``, ``not_found`` and ``failed`` count IDs that reached that state.
    ``unchanged`` is not another outcome: it counts the bodies, among those written, that
    were byte-identical to the archived one (a re-fetch), so most are also in ``archived``.
    ``waiting_retry`` is a gauge, not a total: IDs of this run now ``pending`` after a
    retryable failure (kept only when the run reports progress).
    """

    archived: int = 0
    unchanged: int = 0
    repolled: int = 0
    retried: int = 0
    not_found: int = 0
    failed: int = 0
    lost_lease: int = 0
    released: int = 0
    requests: int = 0
    batches: int = 0
    peak_held_bytes: int = 0
    duration_s: float = 0.0
    stop_reason: str | None = None
    remaining: dict[str, int] = field(default_factory=dict)
    waiting_retry: int = 0

    def add(self, report: WriteReport) -> None:
        """Fold one batch report in."""
        for name in OUTCOME_COUNTS:
            setattr(self, name, getattr(self, name) + getattr(report, name))
        self.batches += 1

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly view."""
        return {
            "archived": self.archived,
            "unchanged": self.unchanged,
            "repolled": self.repolled,
            "retried": self.retried,
            "not_found": self.not_found,
            "failed": self.failed,
            "lost_lease": self.lost_lease,
            "released": self.released,
            "requests": self.requests,
            "peak_held_mb": round(self.peak_held_bytes / MB, 1),
            "duration_s": round(self.duration_s, 3),
            "stop_reason": self.stop_reason,
            "remaining": self.remaining,
        }


def retry_policy_from(settings: Settings) -> RetryPolicy:
    """The retry policy the settings describe."""
    return RetryPolicy(
        max_attempts=settings.max_attempts,
        backoff_base_s=settings.backoff_base,
        backoff_cap_s=settings.backoff_cap,
        max_server_wait_s=settings.max_server_wait,
        not_found_recheck_s=settings.not_found_recheck,
        repoll_s=settings.repoll,
    )


async def wait_first(events: list[asyncio.Event], timeout: float) -> None:
    """Wait up to ``timeout`` seconds until any of ``events`` is set."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def wait_for_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait for ``event`` at most ``timeout`` seconds; True if it was set."""
    if event.is_set():
        return True
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout=max(timeout, 0))
    return event.is_set()


class Worker:
    """Archives due queue rows. Build one per run; call :meth:`run` once.

    ``writer_process`` is a writer process already started (:mod:`archiver.childproc`),
    for the writer to use instead of starting one; its starter stays its owner.
    ``writer`` is a writer shared with the workers of other sources (:mod:`archiver.runner`):
    its owner starts and closes it.

    A worker serves one source (``settings.source``): it claims only that source's rows,
    with that source's URL, key, provider rules, concurrency, breaker and ``max_rps``.
    """

    def __init__(
        self,
        settings: Settings,
        engine: AsyncEngine,
        *,
        once: bool = False,
        on_progress: Callable[[RunSummary], None] | None = None,
        rand: Callable[[], float] = random.random,
        metrics: Metrics | None = None,
        notifier: SystemdNotifier | None = None,
        writer_process: subprocess.Popen[bytes] | None = None,
        writer: BatchWriter | None = None,
    ) -> None:
        # Secrets never leave the process, also when a program builds the Worker itself
        # (the CLI registers these too; registering twice is harmless).
        register_secret(settings.api_key)
        register_database_url(settings.database_url)
        register_database_url(settings.base_url)
        self.settings = settings
        self.source = settings.source
        self.once = once
        self.hold_outlives_run = False
        """Set by the :class:`~archiver.runner.Runner` of several sources: after a trip of
        ``--once`` this worker's row (its hold) stays for :meth:`report_hold_until`."""
        self.queue = QueueStore(engine)
        self._owns_writer = writer is None
        self.writer: BatchWriter = writer or make_writer(settings, engine, settings.writer, writer_process)
        self.policy = retry_policy_from(settings)
        self.profile: ProviderProfile = settings.profile  # type: ignore[assignment]  # validated
        self.retention_s = settings.retention_s
        self.summary = RunSummary()
        self.stop_event = asyncio.Event()
        # From the stop request: claims and fetches end by the first, database work by the second.
        self.grace = StopDeadline(settings.grace_seconds)
        self.deadline = StopDeadline(settings.grace_seconds + settings.final_write_seconds)
        self._left: list[str] = []  # why rows were left leased (a release that failed), one per row
        self._on_progress = on_progress
        self._waiting_retry: set[str] = set()  # for the progress display (see RunSummary)
        self._rand = rand
        self._jobs: asyncio.Queue[Job | None] = asyncio.Queue()  # bounded by the claimer's capacity
        self._results: asyncio.Queue[FetchResult | None] = asyncio.Queue()
        self._held: dict[str, Job] = {}  # claimed and not yet written
        # Bytes of the bodies being read or fetched and not yet written, and the budget for them.
        self._max_held_bytes = int(settings.max_held_mb * MB)
        self.budget = ByteBudget(self._max_held_bytes)
        self.breaker = Breaker(display_endpoint(settings.base_url))
        self._tripped: Trip | None = None
        self._last_trip: Trip | None = None
        self._probe_lock = asyncio.Lock()
        self._kept: dict[str, int] = {}  # bytes each fetched result holds until written
        # A write batch closes at this many bytes of bodies; a batch that reaches it is "big".
        self._batch_bytes = self._max_held_bytes // BATCH_SHARE_OF_HELD
        self._big_writes = 0  # batches of large bodies being written now
        # (state, detail, the trip holding the source); recorded by _health_report
        self._health: tuple[str, str | None, Trip | None] = ("ok", None, None)
        self._probe_error: str | None = None  # the newest failed probe's answer, while held
        self._health_changed = asyncio.Event()
        self._health_done = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._not_before = 0.0  # monotonic time before which no request is sent (429 pause)
        self.gate = AdaptiveLimit(settings.concurrency)
        self.metrics = metrics or Metrics()
        self.notifier = notifier or SystemdNotifier()
        self.fetcher: Fetcher | None = None  # made in run(), with the HTTP session
        self.metrics.set_concurrency(self.gate.limit, self.gate.max_limit, self.source)
        self.metrics.set_source_up(self.source, True)
        self._rate = FleetRate(engine, self.source, settings.max_rps) if settings.max_rps else None
        self._fatal: BaseException | None = None
        self._release_failed = False
        self.near_expiry = 0
        self._last_tick = time.monotonic()
        self._engine_url = redact_url(engine.url)

    # --- control ---------------------------------------------------------------------

    def is_live(self) -> bool:
        """For /healthz and the systemd watchdog: no task died and the claimer loop turns."""
        if self._fatal is not None:
            return False
        stalled_after = max(LIVENESS_TIMEOUT_S, self.settings.poll_interval * 5)
        return time.monotonic() - self._last_tick < stalled_after

    def is_healthy(self) -> bool:
        """For /healthz: live, and the circuit breaker is not holding the run (endpoint answers)."""
        return self.is_live() and not self.breaker.open

    def request_stop(self, reason: str) -> None:
        """Ask the run to stop gracefully (idempotent; the first reason is kept)."""
        if not self.stop_event.is_set():
            self.summary.stop_reason = self.summary.stop_reason or reason
            log.info("archiver.stop_requested", reason=reason, deadline_s=self.deadline.budget_s)
            self.grace.start()
            self.deadline.start()
            self.stop_event.set()

    async def run(self) -> RunSummary:
        """Run until drained (``once``) or stopped. Returns the summary.

        Raises:
            StopRun: the provider refused the account (bad key, billing); rows are released.
        """
        started = time.monotonic()
        s = self.settings
        log.info(
            "archiver.run_started",
            version=__version__,
            source=self.source,
            database=self._engine_url,
            base_url=display_base_url(s.base_url),
            concurrency=s.concurrency,
            once=self.once,
            profile=self.profile,
            include=list(s.include_values),
            owner=s.owner,
        )
        if self._owns_writer:
            await self.writer.start()
        try:
            await self._run_pipeline()
        finally:
            if self._owns_writer:
                await self.writer.close(self.deadline)
        self.summary.duration_s = time.monotonic() - started
        with contextlib.suppress(Exception):
            self.summary.remaining = await self.deadline.run(self.queue.counts)
        if not (self.hold_outlives_run and self._tripped is not None):
            with contextlib.suppress(Exception):
                await self.deadline.run(partial(forget_worker, self.queue.engine, s.owner))
        rate = (
            {}
            if self._rate is None
            else {"rate_grants": self._rate.grants, "rate_skipped": self._rate.dropped}
        )
        log.info(
            "archiver.run_stopped",
            source=self.source,
            **rate,
            reason=self.summary.stop_reason or "drained",
            **self._summary_fields(),
        )
        # (A run that failed or tripped says so instead; its release_failed line counts them.)
        left_by_stop = (
            bool(self._left) and self.deadline.started and self._fatal is None and not self._tripped
        )
        if left_by_stop:
            log.error(
                "archiver.stop_left_in_flight",
                source=self.source,
                count=len(self._left),
                error=self._left[0],
                lease_seconds=s.lease_seconds,
            )
        if self._fatal is not None:
            raise self._fatal
        if self._tripped is not None:
            if self._tripped.key_refused:
                raise StopRun(self._tripped.reason)
            raise EndpointDown(self._tripped.reason)
        if left_by_stop:
            raise StopDeadlinePassed(
                f"stopped ({self.summary.stop_reason}) with {len(self._left)} rows neither written nor "
                f"released: {self._left[0]}; their leases return them to pending after "
                f"--lease-seconds ({s.lease_seconds:g} s), then a run archives them"
            )
        return self.summary

    async def _run_pipeline(self) -> None:
        s = self.settings
        async with ResponsesClient(
            s.base_url,
            s.api_key,
            concurrency=s.concurrency,
            request_timeout=s.request_timeout,
            connect_timeout=s.connect_timeout,
            max_body_bytes=int(s.max_body_mb * MB),
        ) as client:
            self.fetcher = Fetcher(
                client,
                self.policy,
                self.profile,
                retention_s=self.retention_s,
                with_input_items=s.with_input_items,
                rand=self._rand,
                include=s.include_values,
                pace=self._rate.acquire if self._rate is not None else None,
            )
            writer_task = self._spawn("writer", self._writer())
            heartbeat = self._spawn("heartbeat", self._heartbeat())
            watchers = [
                self._spawn("expiry-watch", self._expiry_watch()),
                self._spawn("watchdog", watchdog_loop(self.notifier, self.is_live, self.stop_event)),
            ]
            health = self._spawn("health-report", self._health_report())
            self.notifier.ready(f"archiving with concurrency {s.concurrency}")
            fetchers = [self._spawn(f"fetcher-{i}", self._fetcher()) for i in range(s.concurrency)]
            claimer = self._spawn("claimer", self._claimer())
            try:
                await asyncio.shield(claimer)
            except asyncio.CancelledError:
                # Cancelling run() becomes a graceful stop.
                self.request_stop("cancelled")
                await claimer
            await self._shutdown(fetchers, writer_task, [heartbeat, *watchers])
            # Not cancelled with the other side tasks: a write cut off mid-statement would
            # leave a connection behind. It ends by itself once told to.
            self._health_done.set()
            await health

    def _summary_fields(self) -> dict[str, Any]:
        d = self.summary.as_dict()
        d.pop("stop_reason", None)
        return d

    def _spawn(self, name: str, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        return asyncio.create_task(self._guard(name, coro), name=f"archiver.{name}")

    async def _guard(self, name: str, coro: Awaitable[None]) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # A dead side task must stop the run loudly, never leave it hanging. (Once: the
            # other write tasks and the claimer often die of the same full disk.)
            if self._fatal is None or describe_error(exc) != describe_error(self._fatal):
                log.error("archiver.task_crashed", task=name, error=describe_error(exc))
            if self._fatal is None:
                self._fatal = exc
            self.request_stop(f"task {name} crashed")

    async def _shutdown(
        self,
        fetchers: list[asyncio.Task[None]],
        writer: asyncio.Task[None],
        side_tasks: list[asyncio.Task[None]],
    ) -> None:
        self.notifier.stopping(f"stopping: {self.summary.stop_reason or 'drained'}")
        # 1. Claimed but not started: release now.
        unstarted: list[Job] = []
        while not self._jobs.empty():
            job = self._jobs.get_nowait()
            if job is not None:
                unstarted.append(job)
                self._held.pop(job.response_id, None)
        if unstarted:
            await self._release(unstarted, "shutdown before start")
        # 2. Let in-flight fetches finish (within the grace period when stopping early).
        for _ in fetchers:
            await self._jobs.put(None)
        _, pending = await asyncio.wait(fetchers, timeout=self.grace.left())
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
            log.warning("archiver.grace_expired", cancelled_fetches=len(pending))
        # 3. Write what finished, then release whatever is still held.
        await self._results.put(None)
        await writer
        for task in side_tasks:
            task.cancel()
        # Not past the deadline: a heartbeat cut mid-statement may take seconds to let go
        # of its connection (see StopDeadline.run).
        await asyncio.wait(side_tasks, timeout=self.deadline.left())
        leftover = list(self._held.values())
        self._held.clear()
        if leftover:
            await self._release(leftover, "shutdown in flight")

    async def _release(self, jobs: list[Job], reason: str, *, quiet: bool = False) -> None:
        try:
            await with_db_retry(lambda: self.queue.release(jobs, reason), deadline=self.deadline)
            self.summary.released += len(jobs)
            if not quiet:  # one-job releases by fetchers are summed in run_stopped instead
                log.info("archiver.released", count=len(jobs), reason=reason)
        except Exception as exc:
            self._left.extend([db_error_message(exc)] * len(jobs))
            # The leases will expire and another run will pick these rows up. One line per
            # run: with a full disk every fetcher's release fails the same way.
            if not self._release_failed:
                self._release_failed = True
                log.error("archiver.release_failed", count=len(jobs), error=db_error_message(exc))

    # --- claimer ---------------------------------------------------------------------------

    async def _claimer(self) -> None:
        s = self.settings
        # Held rows: queued for a fetcher, being fetched, waiting for the writer, and the
        # batches being written. The slack lets fetchers run on while a claim waits for the
        # SQLite write lock, and while the writer works through a burst; it is bounded so a
        # slow writer stops the claims (bench/README.md, "claims that do not wait on the
        # writer's lock", has the figures).
        capacity = s.concurrency * 2 + s.batch_size * 6
        while not self.stop_event.is_set():
            self._last_tick = time.monotonic()
            await self._consider_trip()
            limit = await self._claim_limit(capacity)
            if limit == 0:
                continue
            try:
                jobs = await with_db_retry(
                    partial(
                        self.queue.claim_batch, s.owner, limit, s.lease_seconds, s.max_attempts, self.source
                    ),
                    on_retry=log_db_retry,
                    deadline=self.grace,
                )
            except StopDeadlinePassed:
                return  # a claim cut at the end of the grace period: its rows' leases expire
            for job in jobs:
                self._held[job.response_id] = job
            for job in jobs:
                await self._jobs.put(job)
            if jobs:
                continue
            if self.breaker.held and len(self.breaker.held) >= len(self._held):
                # Nothing else is in flight or due: no other answer will tell whether the
                # held results are about their IDs or about the endpoint. Ask the endpoint.
                await self._consider_trip(all_held=True)
                continue
            if self.once:
                # Held rows are noted before the query: a batch written while it runs can
                # leave a row pending and due soon (a 404 to re-check) that the query
                # did not see, so only a query begun with nothing held can end the run.
                # (Only this loop adds held rows, so none appear during the query.)
                held_before = bool(self._held)
                try:
                    due, next_due = await with_db_retry(
                        lambda: self.queue.due_summary(s.drain_horizon, self.source), deadline=self.grace
                    )
                except StopDeadlinePassed:
                    return
                if not held_before and due == 0:
                    return  # rows due later than the horizon stay pending (see summary.remaining)
                wait = s.poll_interval if next_due is None else min(s.poll_interval, max(next_due, 0.01))
                if self._held:
                    wait = min(wait, 0.05)
            else:
                wait = s.poll_interval
            self._slot_freed.clear()
            await self._wait_any(self._slot_freed, wait)

    async def _claim_limit(self, capacity: int) -> int:
        """How many rows to claim now (0: waited instead; loop again).

        While the circuit breaker is open nothing is claimed until its pause ends; then a
        probe of the worker's own decides: claims resume when it proves the endpoint works,
        else the breaker trips again with a longer pause.
        """
        s = self.settings
        if self.breaker.open:
            left = self.breaker.pause_left()
            if left > 0 or self._held:
                await wait_for_event(self.stop_event, min(left, s.poll_interval) if left > 0 else 0.05)
                return 0
            if await self._probe_proves():
                self.breaker.vouch()
                self._recovered()
            elif self._last_trip is not None:
                await self._trip(self._last_trip)
            return 0
        room = capacity - len(self._held)
        if room < min(s.batch_size, s.concurrency):
            self._slot_freed.clear()
            await self._wait_any(self._slot_freed, s.poll_interval)
            return 0
        return min(s.batch_size, room)

    async def _consider_trip(self, *, all_held: bool = False) -> None:
        """Probe the endpoint when held results suggest it is at fault; trip if the probe agrees.

        Args:
            all_held: the held results are all this worker has (see Breaker.should_trip).
        """
        if self.breaker.should_trip(all_held=all_held) is None:
            return
        async with self._probe_lock:
            trip = self.breaker.should_trip(all_held=all_held)  # again: another task may have decided
            if trip is None:
                return
            if trip.probe and await self._probe_proves():
                decided = self.breaker.vouch()
                log.info("archiver.endpoint_vouched", kind=trip.kind, per_id=len(decided))
                for held in decided:  # the endpoint works: they were about their own IDs
                    self.budget.take_back(self._kept_of(held))
                    await self._results.put(self._per_id(held))
                return
            await self._trip(trip)

    async def _probe_proves(self) -> bool:
        """Ask the endpoint about an ID that cannot exist: a working one answers its JSON not-found.

        Any answer only a working endpoint and an accepted key give (see
        :func:`archiver.breaker.proves_endpoint`), or a throttle, proves it works.
        """
        assert self.fetcher is not None
        outcome = await self.fetcher.probe_endpoint()
        self.summary.requests += 1
        proven = proves_endpoint(outcome) or (isinstance(outcome, Retry) and outcome.throttled)
        self._probe_error = None if proven else str(getattr(outcome, "reason", "")) or None
        log.info(
            "archiver.endpoint_probe",
            endpoint=self.breaker.endpoint,
            proven=proven,
            status_code=getattr(outcome, "status_code", None),
            error=redact(getattr(outcome, "reason", "")) or None,
        )
        return proven

    async def _trip(self, trip: Trip) -> None:
        """The endpoint (or the key) is at fault: give held rows back; stop (--once) or pause."""
        self._last_trip = trip
        refund = {rid: n for rid, (_, n) in self.breaker.streak_5xx.items()} if trip.kind == "5xx" else {}
        released = self.breaker.trip()
        for held in released:
            self.budget.take_back(self._kept_of(held))
        self.metrics.set_source_up(self.source, False)
        self.metrics.set_source_held(self.source, hold_kind(trip))
        self.metrics.breaker_trips.inc()
        await self._release_results(released, f"circuit breaker: {trip.kind}")
        if refund:
            await self._refund_attempts(refund)
        down = {"source": self.source, "kind": trip.kind, "error": trip.reason, "released": len(released)}
        self._set_health("refused" if trip.key_refused else "paused", trip.reason, trip)
        if self.once:
            log.error("archiver.endpoint_down", **down)
            self._tripped = self._tripped or trip
            self.request_stop(trip.reason)
            return
        pause = self.breaker.pause_left()
        log.error("archiver.endpoint_down", **down, wait_s=round(pause, 3))
        self.notifier.status(f"paused {pause:.0f}s: {trip.reason}")

    async def _refund_attempts(self, spent: dict[str, int]) -> None:
        """Give back the attempts 5xx answers spent, to IDs caught in a run that tripped the breaker.

        Rows this worker holds in flight again are refunded too (fenced by their lease
        owner, this worker: a claim it has made but not yet registered in ``_held`` is its
        own too): their own fetch is then released (one more attempt back) or written as
        the retry the refund already counted. A row another worker holds now is left alone.
        """
        owner = self.settings.owner
        try:
            await with_db_retry(lambda: self.queue.refund_attempts(spent, owner), deadline=self.deadline)
        except Exception as exc:
            log.warning("archiver.refund_failed", count=len(spent), error=db_error_message(exc))

    def _recovered(self) -> None:
        self.breaker.reset()
        self.metrics.set_source_up(self.source, True)
        self.metrics.set_source_held(self.source, None)
        log.info("archiver.endpoint_recovered", source=self.source, endpoint=self.breaker.endpoint)
        self.notifier.status(f"archiving with concurrency {self.settings.concurrency}")
        self._probe_error = None
        self._set_health("ok", None, None)

    def _set_health(self, state: str, detail: str | None, trip: Trip | None) -> None:
        self._health = (state, detail, trip)
        self._health_changed.set()

    async def _health_report(self) -> None:
        """Keep this worker's row in ``archive_workers`` current: on every change, and every
        ``HEALTH_REFRESH_S`` (a row not refreshed is a dead worker's)."""
        while True:
            self._health_changed.clear()
            await self._record_health(*self._health)
            await wait_first([self._health_changed, self._health_done], HEALTH_REFRESH_S)
            if self._health_done.is_set() and not self._health_changed.is_set():
                return  # a change made as the run ended (a trip of --once) is recorded first

    async def report_hold_until(self, done: asyncio.Event) -> None:
        """Keep this stopped worker's hold recorded until ``done``, then forget its row.

        ``run --once`` serving several sources: a source its breaker stopped keeps its IDs
        ``pending`` while the other sources drain, and ``archiver status`` says why.
        """
        try:
            while not done.is_set():
                await wait_first([done], HEALTH_REFRESH_S)
                if not done.is_set():
                    await self._record_health(*self._health)
        finally:
            with contextlib.suppress(Exception):
                await forget_worker(self.queue.engine, self.settings.owner)

    async def _record_health(self, state: str, detail: str | None, trip: Trip | None) -> None:
        """Write this worker's breaker state where ``archiver check`` and ``status`` read it."""
        # The next probe as of now: a refresh during a long pause moves nothing but the age.
        # --once never probes again after a trip: the next run does.
        probe_in = None if self.once else self.breaker.pause_left()
        hold = None if trip is None else Hold.of_trip(trip, self._probe_error, probe_in)
        try:
            await self.deadline.run(
                partial(
                    record_worker,
                    self.queue.engine,
                    self.settings.owner,
                    state=state,
                    detail=detail,  # record_worker redacts and shortens it, and the hold's error
                    base_url=self.breaker.endpoint,
                    source=self.source,
                    hold=hold,
                )
            )
        except Exception as exc:
            log.warning("archiver.health_record_failed", error=db_error_message(exc))

    async def _wait_any(self, other: asyncio.Event, timeout: float) -> None:
        """Sleep up to ``timeout``, waking early on stop or on ``other``."""
        await wait_first([self.stop_event, other], timeout)

    # --- fetchers -------------------------------------------------------------------------

    async def _fetcher(self) -> None:
        while True:
            job = await self._jobs.get()
            if job is None:
                return
            await self.budget.wait_for_room(self.stop_event)
            await self.gate.acquire()
            congested = False
            try:
                await self._pause_if_throttled()
                if self._rate is not None:
                    await self._rate.acquire(self.stop_event)
                if self.stop_event.is_set() or self.breaker.open:
                    # Stopped (or the breaker tripped) before this job started, possibly while
                    # it waited out a 429, a slot or the rate limit: release it without
                    # spending the attempt.
                    self._held.pop(job.response_id, None)
                    await self._release([job], "shutdown before start", quiet=True)
                    continue
                with self.metrics.track_request():
                    result = await self.fetch_one(job)
                congested = _is_congestion(result.outcome)
            finally:
                await self.gate.release(congested=congested)
                self.metrics.set_concurrency(self.gate.limit, self.gate.max_limit, self.source)
            self.summary.peak_held_bytes = max(self.summary.peak_held_bytes, self.budget.peak)
            await self._route(result)
            # Not kept alive while this task waits for its next job: a body of up to
            # --max-body-mb per fetcher would otherwise stay in memory, uncounted.
            del result

    async def _route(self, result: FetchResult) -> None:
        """Send a result to the writer, or hold it back / release it as the breaker says."""
        was_open = self.breaker.open
        verdict, decided = self.breaker.observe(result)
        if was_open and not self.breaker.open:
            self._recovered()  # a straggler's good answer while paused
        for held in decided:  # answers about their own IDs after all
            self.budget.take_back(self._kept_of(held))
            await self._results.put(self._per_id(held))
        if verdict == "write":
            await self._results.put(result)
        elif verdict == "release":
            await self._release_results([result], "circuit breaker open")
        else:
            self.budget.set_aside(self._kept_of(result))
        if verdict != "release" and (verdict == "hold" or self.breaker.streak_5xx):
            await self._consider_trip()

    def _kept_of(self, result: FetchResult) -> int:
        """Bytes a fetched result holds in the budget until it is written or released."""
        return self._kept.get(result.job.response_id, held_bytes(result.outcome))

    def _let_go(self, result: FetchResult) -> None:
        """The result is written or released: its bytes leave the budget."""
        self.budget.release(self._kept.pop(result.job.response_id, held_bytes(result.outcome)))

    def _per_id(self, result: FetchResult) -> FetchResult:
        outcome = result.outcome
        if not isinstance(outcome, StopAll):
            return result
        per_id = refused_for_one_id(
            outcome, attempt=result.job.attempt, policy=self.policy, rand=self._rand()
        )
        log.warning(
            "archiver.fetch_retry" if isinstance(per_id, Retry) else "archiver.fetch_failed",
            response_id=result.job.response_id,
            attempt=result.job.attempt,
            status_code=outcome.status_code,
            error=redact(per_id.reason) if isinstance(per_id, Retry | Permanent) else None,
        )
        return replace(result, outcome=per_id)

    async def _release_results(self, results: list[FetchResult], reason: str) -> None:
        """Give rows whose results are not written back as ``pending``, attempts given back."""
        if not results:
            return
        for r in results:
            self._held.pop(r.job.response_id, None)
            self._let_go(r)
        await self._release([r.job for r in results], reason)
        self._slot_freed.set()

    async def _pause_if_throttled(self) -> None:
        wait = self._not_before - time.monotonic()
        if wait > 0:
            await wait_for_event(self.stop_event, wait)

    async def fetch_one(self, job: Job) -> FetchResult:
        """Fetch one job; log, count and pause the pool as its outcome says.

        The bytes read count against the byte budget from the first one; once the fetch is
        over, only what its outcome keeps stays counted until it is written.
        """
        assert self.fetcher is not None
        reservation = self.budget.reservation()
        try:
            result = await self.fetcher.fetch(job, reservation)
        except BaseException:
            reservation.keep(0)
            raise
        # Input items wait for the writer beside the body, parsed and as rows: everything
        # taken stays counted then (their pages, what their parse weighs and ROW_BYTES an
        # item for their rows, see Fetcher._input_items).
        kept = reservation.taken if result.input_items else held_bytes(result.outcome)
        reservation.keep(kept)
        self._kept[job.response_id] = kept
        self.summary.requests += result.requests
        outcome = result.outcome
        if isinstance(outcome, StopAll):
            self.metrics.observe_fetch(None, outcome.status_code, result.duration_s)
            log.warning(
                "archiver.provider_refused",
                source=self.source,
                response_id=job.response_id,
                status_code=outcome.status_code,
                error=outcome.reason,
            )
            return result
        if isinstance(outcome, Retry):
            if outcome.throttled:
                self._not_before = max(
                    self._not_before,
                    time.monotonic() + min(outcome.delay_s, self.policy.max_server_wait_s),
                )
            log.warning(
                "archiver.fetch_retry",
                response_id=job.response_id,
                attempt=job.attempt,
                status_code=outcome.status_code,
                wait_s=round(outcome.delay_s, 3),
                error=redact(outcome.reason),
            )
        elif isinstance(outcome, Permanent):
            log.warning(
                "archiver.fetch_failed",
                response_id=job.response_id,
                attempt=job.attempt,
                status_code=outcome.status_code,
                state=outcome.state,
                error=redact(outcome.reason),
            )
        self.metrics.observe_fetch(outcome, None, result.duration_s)
        return result

    # --- writer and heartbeat -------------------------------------------------------------------

    async def _writer(self) -> None:
        # Up to ``writer.depth`` batches are written at once while the next one fills.
        writes: set[asyncio.Task[None]] = set()
        try:
            finished = False
            while not finished and self._fatal is None:
                batch, finished = await self._next_batch()
                if not batch:
                    continue
                # A batch of large bodies is written alone: the writer process then holds one
                # such batch at a time (its memory grows with the bodies it normalizes).
                big = sum(self._kept_of(r) for r in batch) >= self._batch_bytes
                while len(writes) >= (1 if big or self._big_writes else self.writer.depth):
                    _, writes = await asyncio.wait(writes, return_when=asyncio.FIRST_COMPLETED)
                writes.add(self._spawn("write", self._write(batch, big=big)))
                batch = []  # the write task holds it alone (see _write)
        finally:
            if writes:
                await asyncio.wait(writes)

    async def _next_batch(self) -> tuple[list[FetchResult], bool]:
        """(results to write, whether the end-of-results marker came)."""
        first = await self._results.get()
        if first is None:
            return [], True
        batch = [first]
        size = self._kept_of(first)
        deadline = time.monotonic() + WRITE_LINGER_S
        while len(batch) < self.settings.batch_size and size < self._batch_bytes:
            try:
                item = self._results.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._results.get(), remaining)
                except TimeoutError:
                    break
            if item is None:
                return batch, True
            batch.append(item)
            size += self._kept_of(item)
        return batch, False

    async def _write(self, sent: list[FetchResult], *, big: bool = False) -> None:
        started = time.monotonic()
        self._big_writes += big
        # The writer process lets go of ``sent`` once it has sent it (input items wait
        # parsed, maybe hundreds of MB); what is done after the write needs none of them.
        batch = [result.without_input_items() for result in sent]
        try:
            report = await self.writer.write(sent, self.deadline)
        except StopDeadlinePassed:
            return  # its rows are still held: _shutdown counts them, their leases recover them
        finally:
            self._big_writes -= big
            del sent
        for r in batch:
            self._held.pop(r.job.response_id, None)
            self._let_go(r)
        self._slot_freed.set()
        self.summary.add(report)
        self.metrics.observe_batch(report)
        if self._on_progress is not None:
            self._track_retries(batch, report)
        if report.lost_lease:
            log.warning(
                "archiver.lease_lost",
                count=report.lost_lease,
                response_ids=report.lost_ids[:10],
            )
        log.info(
            "archiver.batch_written",
            results=len(batch),
            archived=report.archived,
            unchanged=report.unchanged,
            repolled=report.repolled,
            retried=report.retried,
            not_found=report.not_found,
            failed=report.failed,
            rows=report.rows_written,
            duration_s=round(time.monotonic() - started, 4),
        )
        if self._on_progress is not None:
            self._on_progress(self.summary)

    def _track_retries(self, batch: list[FetchResult], report: WriteReport) -> None:
        """Keep ``summary.waiting_retry``: IDs written back as ``pending`` for a retry, until
        a later batch of this run writes them again (finished, or retried once more)."""
        lost = set(report.lost_ids)
        for r in batch:
            rid = r.job.response_id
            if isinstance(r.outcome, Retry) and rid not in lost:
                self._waiting_retry.add(rid)
            else:
                self._waiting_retry.discard(rid)
        self.summary.waiting_retry = len(self._waiting_retry)

    async def _expiry_watch(self) -> None:
        """Warn about pending IDs the provider is about to delete (or already has)."""
        if self.retention_s is None:
            return
        while not self.stop_event.is_set():
            try:
                near, past = await self.queue.expiry_counts(self.retention_s, source=self.source)
            except Exception as exc:
                log.warning("archiver.expiry_check_failed", error=db_error_message(exc))
            else:
                self.near_expiry = near
                if near or past:
                    log.warning(
                        "archiver.expiry_warning",
                        pending_near_expiry=near,
                        pending_past_retention=past,
                        retention_days=round(self.retention_s / 86400, 3),
                    )
            await wait_for_event(self.stop_event, EXPIRY_CHECK_INTERVAL_S)

    async def _heartbeat(self) -> None:
        interval = max(self.settings.lease_seconds / 3, 0.2)
        while True:
            await asyncio.sleep(interval)
            tokens = {job.lease_token for job in self._held.values()}
            if tokens:
                try:
                    await self.queue.extend_leases(tokens, self.settings.lease_seconds)
                except Exception as exc:
                    log.warning("archiver.heartbeat_failed", error=db_error_message(exc))


def describe_error(exc: BaseException) -> str:
    """An exception for a log line: an expected fault's message, else its type and the first
    line (a database error's driver message only, never its SQL and parameters)."""
    if isinstance(exc, ArchiverError):
        return redact(str(exc))
    return f"{type(exc).__name__}: {db_error_message(exc)}"


def display_endpoint(base_url: str) -> str:
    """How messages show the endpoint: ``scheme://host:port/path/responses/…`` (IPv6 in brackets)."""
    return display_base_url(base_url).rstrip("/") + "/responses/…"


def _is_congestion(outcome: Outcome) -> bool:
    """429s and timeouts shrink the adaptive concurrency limit."""
    return isinstance(outcome, Retry) and (outcome.throttled or "timed out" in outcome.reason)
