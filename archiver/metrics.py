"""Prometheus metrics: what the pipeline does, how the queue looks, and a scrape endpoint.

Every :class:`Metrics` owns its own ``CollectorRegistry`` (never the process-global one),
so tests and embedders may create as many as they like. The worker feeds it through a
few domain methods (``observe_fetch``, ``observe_batch``, ...); the queue gauges are
refreshed by :func:`queue_gauge_loop`, because counting the queue is a database query
that must not run on every scrape. :func:`start_metrics_server` serves ``GET /metrics``
and ``GET /healthz`` on loopback by default.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import platform
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from archiver.errors import ConfigError, described
from archiver.logs import get_logger, redact
from archiver.outcomes import Archived, Outcome, Permanent, Retry, StopAll
from archiver.queue import QUEUE_STATES, QueueStore
from archiver.store import WriteReport

if TYPE_CHECKING:
    from aiohttp import web  # imported where a server starts: most runs serve no metrics

__all__ = [
    "DEFAULT_METRICS_HOST",
    "DEFAULT_METRICS_PORT",
    "FETCH_OUTCOMES",
    "REQUEST_DURATION_BUCKETS",
    "RETRY_REASONS",
    "Metrics",
    "MetricsServer",
    "QueueGauges",
    "fetch_outcome_label",
    "queue_gauge_loop",
    "retry_reason_label",
    "start_metrics_server",
]

log = get_logger()

DEFAULT_METRICS_HOST = "127.0.0.1"
DEFAULT_METRICS_PORT = 9464  # the port OpenTelemetry's Prometheus exporter uses by convention

FETCH_OUTCOMES = ("archived", "repoll", "retry", "not_found", "failed", "stop")
"""Values of the ``outcome`` label of ``archiver_fetches_total``."""

RETRY_REASONS = (
    "throttled",
    "server_error",
    "timeout",
    "connection",
    "bad_body",
    "not_found_recheck",
    "other",
)
"""Values of the ``reason`` label of ``archiver_retries_total``."""

REQUEST_DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
"""Seconds: a fast cache hit (10 ms) up to a request that hits a 120 s total timeout."""

_REFRESH_TIMEOUT_FLOOR_S = 10.0

LISTENER_IDLE_TIMEOUT_S = 20.0
"""Seconds a connection to the listener may stay open without a whole request head: from
when it opens (a client trickling its headers, slowloris) and between keep-alive requests
(longer than Prometheus's default 15 s scrape interval, so a scraper's idle connection is
not closed just as its next scrape is sent)."""
LISTENER_MAX_CONNECTIONS = 256
"""Connections the listener keeps open at once (each is a file descriptor, which the
database and the provider's connections need too): one more closes one that serves no
request, or is itself closed at once when every one serves a request."""


def fetch_outcome_label(outcome: Outcome | None) -> str:
    """The ``outcome`` label for one fetch.

    Args:
        outcome: what the fetch came to. None counts as ``stop``: it is what
            ``Worker.fetch_one`` returns when the provider refused the account.

    Returns:
        One of :data:`FETCH_OUTCOMES`. A ``queued``/``in_progress`` snapshot is
        ``repoll``; a terminal body is ``archived``.
    """
    if outcome is None or isinstance(outcome, StopAll):
        return "stop"
    if isinstance(outcome, Archived):
        return "archived" if outcome.terminal else "repoll"
    if isinstance(outcome, Retry):
        return "retry"
    return outcome.state  # Permanent: "not_found" or "failed"


def retry_reason_label(retry: Retry) -> str:
    """Why a fetch is retried, as a small fixed set (the ``reason`` label).

    Derived from the status code, the ``throttled`` flag and, for transport errors
    (no status code), the start of the reason text that ``policy.classify_exception``
    writes (``timed out (...)`` / ``connection failed (...)``).

    Returns:
        One of :data:`RETRY_REASONS`.
    """
    status = retry.status_code
    if retry.throttled or status == 429:
        return "throttled"
    if status is None:
        if retry.reason.startswith("timed out"):
            return "timeout"
        if retry.reason.startswith("connection failed"):
            return "connection"
        return "other"
    if status == 200:
        return "bad_body"  # a 200 whose body is not the requested Response
    if status == 404:
        return "not_found_recheck"
    if status == 408:
        return "timeout"
    if 500 <= status <= 599:
        return "server_error"
    return "other"


class Metrics:
    """The archiver's Prometheus series, in a registry of their own.

    Cheap to build: a worker without a metrics server can keep one anyway and call its
    methods unconditionally. All methods are synchronous and never touch the database.

    Args:
        clock: unix-time clock for ``archiver_last_batch_timestamp_seconds`` and
            ``archiver_queue_refresh_timestamp_seconds`` (tests pass their own).
    """

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        from archiver import __version__  # late: archiver/__init__ may re-export this module

        self._clock = clock
        self._fetch_children: dict[tuple[str, int | None], Any] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.fetches = Counter(
            "archiver_fetches",
            "Fetches of one response ID, by outcome and HTTP status ('none' for transport errors).",
            ["outcome", "status_code"],
            registry=r,
        )
        self.retries = Counter(
            "archiver_retries", "Fetches that will be retried, by reason.", ["reason"], registry=r
        )
        self.throttled = Counter(
            "archiver_throttled", "HTTP 429 answers from the provider (rate limits).", registry=r
        )
        self.requests_in_flight = Gauge(
            "archiver_requests_in_flight", "HTTP requests to the provider in flight now.", registry=r
        )
        self.concurrency_limit = Gauge(
            "archiver_concurrency_limit",
            "Requests allowed in flight now by the adaptive (AIMD) limits (all sources together).",
            registry=r,
        )
        self.concurrency_max = Gauge(
            "archiver_concurrency_max",
            "Ceiling of the adaptive limits (each source's concurrency, added up).",
            registry=r,
        )
        self.queue_rows = Gauge("archiver_queue_rows", "Queue rows per state.", ["state"], registry=r)
        self.oldest_pending_age = Gauge(
            "archiver_oldest_pending_age_seconds",
            "Age of the oldest pending queue row since it was enqueued (0 when none is pending).",
            registry=r,
        )
        self.pending_near_expiry = Gauge(
            "archiver_pending_near_expiry",
            "Pending rows within a day of the provider's retention limit.",
            registry=r,
        )
        self.queue_refreshed_at = Gauge(
            "archiver_queue_refresh_timestamp_seconds",
            "Unix time the queue gauges were last refreshed (stale gauges: the database is unreachable).",
            registry=r,
        )
        self.queue_refresh_failures = Counter(
            "archiver_queue_refresh_failures",
            "Queue gauge refreshes that failed (database errors).",
            registry=r,
        )
        self.request_duration = Histogram(
            "archiver_request_duration_seconds",
            "Duration of one fetch, from sending the request to having its outcome.",
            buckets=REQUEST_DURATION_BUCKETS,
            registry=r,
        )
        self.rows_written = Counter(
            "archiver_rows_written",
            "Rows written to the archive tables (responses and child rows).",
            registry=r,
        )
        self.batches_written = Counter(
            "archiver_batches_written", "Batches committed by the writer.", registry=r
        )
        self.lost_leases = Counter(
            "archiver_lost_leases",
            "Results dropped because another worker took over the row's lease.",
            registry=r,
        )
        self.last_batch_at = Gauge(
            "archiver_last_batch_timestamp_seconds",
            "Unix time of the last committed batch (0 before the first).",
            registry=r,
        )
        self.build_info = Gauge(
            "archiver_build_info",
            "Always 1; the labels name the running build.",
            ["version", "python"],
            registry=r,
        )
        self.build_info.labels(version=__version__, python=platform.python_version()).set(1)
        self.endpoint_up = Gauge(
            "archiver_endpoint_up",
            "1 while the provider endpoint answers; 0 while the circuit breaker holds the run "
            "(endpoint down, wrong base URL, or key refused on every ID).",
            registry=r,
        )
        self.endpoint_up.set(1)
        self.source_up = Gauge(
            "archiver_source_up",
            "Per source: 1 while its endpoint answers and its key is accepted; 0 while its "
            "circuit breaker holds it (endpoint down, wrong base URL, or key refused).",
            ["source"],
            registry=r,
        )
        self.source_held = Gauge(
            "archiver_source_held",
            "Per source and kind: 1 while this process holds the source's IDs for that reason "
            "(plain_404, redirect, connect, 5xx, refused, billing; see archiver status).",
            ["source", "kind"],
            registry=r,
        )
        self._held_kinds: dict[str, str] = {}
        self._sources_up: dict[str, bool] = {}
        self._concurrency: dict[str, tuple[int, int]] = {}
        self.breaker_trips = Counter(
            "archiver_breaker_trips",
            "Times the circuit breaker tripped (answers about the endpoint, not about one ID).",
            registry=r,
        )
        # Zero-valued series exist from the start, so rate() and absent() behave.
        for reason in RETRY_REASONS:
            self.retries.labels(reason=reason)
        for state in QUEUE_STATES:
            self.queue_rows.labels(state=state).set(0)
        self._extra_states: set[str] = set()

    # --- fetchers -------------------------------------------------------------------------

    def observe_fetch(self, outcome: Outcome | None, status_code: int | None, duration_s: float) -> None:
        """Count one fetch and time it.

        Args:
            outcome: what the fetch came to (None: the run was stopped, see
                :func:`fetch_outcome_label`).
            status_code: HTTP status; when None, the outcome's own ``status_code`` is
                used, and ``"none"`` (a transport error) when that is None too.
            duration_s: seconds from sending the request to having the outcome.
        """
        if status_code is None and outcome is not None:
            status_code = outcome.status_code
        key = (fetch_outcome_label(outcome), status_code)
        child = self._fetch_children.get(key)
        if child is None:
            # labels() takes a lock and builds a key each call; a fetch is the hot path.
            status_label = "none" if status_code is None else str(status_code)
            child = self._fetch_children[key] = self.fetches.labels(outcome=key[0], status_code=status_label)
        child.inc()
        self.request_duration.observe(max(duration_s, 0.0))
        if isinstance(outcome, Retry):
            self.retries.labels(reason=retry_reason_label(outcome)).inc()
        # A 429 that exhausted max_attempts is still a throttle; a StopAll carrying 429
        # (a billing code) is not.
        if status_code == 429 and isinstance(outcome, Retry | Permanent):
            self.throttled.inc()

    def request_started(self) -> None:
        """A request to the provider is now in flight."""
        self.requests_in_flight.inc()

    def request_finished(self) -> None:
        """A request started with :meth:`request_started` is over (whatever its outcome)."""
        self.requests_in_flight.dec()

    @contextlib.contextmanager
    def track_request(self) -> Iterator[None]:
        """``with metrics.track_request(): ...``: in flight for the body of the block."""
        self.request_started()
        try:
            yield
        finally:
            self.request_finished()

    def set_source_up(self, source: str, up: bool) -> None:
        """A source's endpoint answers (or its breaker holds it); ``archiver_endpoint_up``
        is 1 only while every source is up."""
        self._sources_up[source] = up
        self.source_up.labels(source=source).set(1 if up else 0)
        self.endpoint_up.set(1 if all(self._sources_up.values()) else 0)

    def set_source_held(self, source: str, kind: str | None) -> None:
        """The source is held for ``kind`` (None: no longer held); the series of an earlier
        kind of the source drops to 0."""
        before = self._held_kinds.pop(source, None)
        if before is not None and before != kind:
            self.source_held.labels(source=source, kind=before).set(0)
        if kind is not None:
            self._held_kinds[source] = kind
            self.source_held.labels(source=source, kind=kind).set(1)

    def set_concurrency(self, limit: int, maximum: int, source: str = "default") -> None:
        """A source's adaptive limit now (``AdaptiveLimit.limit``) and its ceiling (``max_limit``).

        The gauges show the sum over the sources of this process.
        """
        self._concurrency[source] = (limit, maximum)
        self.concurrency_limit.set(sum(v[0] for v in self._concurrency.values()))
        self.concurrency_max.set(sum(v[1] for v in self._concurrency.values()))

    # --- writer ---------------------------------------------------------------------------

    def observe_batch(self, report: WriteReport) -> None:
        """Count one committed batch (also the "is it alive" timestamp)."""
        self.batches_written.inc()
        self.rows_written.inc(max(report.rows_written, 0))
        self.lost_leases.inc(max(report.lost_lease, 0))
        self.last_batch_at.set(self._clock())

    # --- queue ----------------------------------------------------------------------------

    def set_queue(
        self,
        counts: Mapping[str, int],
        oldest_pending_age_s: float | None,
        near_expiry: int | None = None,
    ) -> None:
        """Set the queue gauges.

        Args:
            counts: rows per state (``QueueStore.counts()``); a state left out is 0.
                A state outside ``QUEUE_STATES`` is shown too, and zeroed once gone.
            oldest_pending_age_s: None when nothing is pending (shown as 0).
            near_expiry: pending rows close to the provider's retention limit; None
                leaves that gauge as it is.
        """
        self._extra_states.update(s for s in counts if s not in QUEUE_STATES)
        for state in (*QUEUE_STATES, *sorted(self._extra_states)):
            self.queue_rows.labels(state=state).set(counts.get(state, 0))
        self.oldest_pending_age.set(max(oldest_pending_age_s or 0.0, 0.0))
        if near_expiry is not None:
            self.set_pending_near_expiry(near_expiry)
        self.queue_refreshed_at.set(self._clock())

    def set_pending_near_expiry(self, count: int) -> None:
        """Pending rows within a day of the provider's retention limit."""
        self.pending_near_expiry.set(count)

    def observe_queue_refresh_failure(self) -> None:
        """A queue gauge refresh failed (the gauges keep their last values)."""
        self.queue_refresh_failures.inc()

    # --- exposition -----------------------------------------------------------------------

    def render(self) -> bytes:
        """Every series in the Prometheus text format (``CONTENT_TYPE_LATEST``)."""
        return generate_latest(self.registry)


# --- queue gauges ------------------------------------------------------------------------------


ARCHIVED_COUNT_SHARE = 0.02
"""The most of its time the queue gauge refresh spends counting ``archived`` rows.

No index holds them (see README, "Queue indexes"), so counting them reads the whole queue:
after a count that took t seconds the next waits t / ARCHIVED_COUNT_SHARE (a 10 s count of
a huge queue: every 8 minutes). A queue counted in milliseconds is counted at each refresh."""


class QueueGauges:
    """Reads the queue for the gauges: at each refresh the states that have a partial index
    (their cost grows with their rows, not the queue's) and the oldest pending age, set
    first; then ``archived`` as ARCHIVED_COUNT_SHARE allows (the gauge keeps the last
    count in between).

    The ``archived`` count runs as a task of its own, which a refresh waits for but does
    not own: a queue too big to count within a refresh's time still gets its other gauges
    at every refresh, and its count, cut short by nobody, lands at a later refresh (one
    count at a time). :meth:`close` cancels a count still running.

    Args:
        queue: the queue to read.
        near_expiry: returns the number for ``archiver_pending_near_expiry`` (None: left alone).
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(
        self,
        queue: QueueStore,
        near_expiry: Callable[[], Awaitable[int]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.queue = queue
        self.near_expiry = near_expiry
        self._clock = clock
        self._archived: dict[str, int] | None = None
        self._archived_due = 0.0
        self._recount: asyncio.Task[None] | None = None

    async def refresh(self, metrics: Metrics) -> None:
        """Read the queue once and set the gauges. Raises on a database error."""
        counts = await self.queue.counts(archived=False)
        oldest = await self.queue.oldest_pending_age()
        counts.update(self._uncounted)
        metrics.set_queue(counts, oldest)
        if self.near_expiry is not None:
            metrics.set_pending_near_expiry(await self.near_expiry())
        if self._recount is None and (self._archived is None or self._clock() >= self._archived_due):
            self._recount = asyncio.create_task(self._count_archived())
        if self._recount is not None:
            recount = self._recount
            try:
                await asyncio.shield(recount)  # a refresh cut short leaves the count running
            finally:
                if recount.done():  # counted, or failed (raised here, once): the next may start
                    self._recount = None
            counts.update(self._uncounted)
            metrics.set_queue(counts, oldest)

    @property
    def _uncounted(self) -> dict[str, int]:
        """The last count of the states without an index: ``archived``, and any state
        archiver does not know."""
        return {"archived": 0, **(self._archived or {})}

    async def _count_archived(self) -> None:
        started = self._clock()
        try:
            counts = await self.queue.counts()
            self._archived = {s: n for s, n in counts.items() if s == "archived" or s not in QUEUE_STATES}
        finally:
            self._archived_due = started + (self._clock() - started) / ARCHIVED_COUNT_SHARE

    async def close(self) -> None:
        """Cancel an ``archived`` count still running."""
        if self._recount is not None:
            self._recount.cancel()
            with contextlib.suppress(BaseException):
                await self._recount
            self._recount = None


async def queue_gauge_loop(
    metrics: Metrics,
    queue: QueueStore,
    interval_s: float,
    stop: asyncio.Event,
    near_expiry: Callable[[], Awaitable[int]] | None = None,
) -> None:
    """Refresh the queue gauges now and every ``interval_s`` until ``stop`` is set.

    A failed refresh (database down, locked, restarted) is logged as
    ``archiver.metrics_refresh_failed``, counted in ``archiver_queue_refresh_failures_total``
    and retried at the next interval: this loop never raises, except ``CancelledError``.
    One refresh may take at most ``max(interval_s, 10)`` seconds.

    Args:
        metrics: where the gauges live.
        queue: the queue to count.
        interval_s: seconds between refreshes.
        stop: set it to end the loop (it is checked while waiting, too).
        near_expiry: returns the number for ``archiver_pending_near_expiry``.
    """
    timeout = max(interval_s, _REFRESH_TIMEOUT_FLOOR_S)
    gauges = QueueGauges(queue, near_expiry)
    try:
        while not stop.is_set():
            try:
                await asyncio.wait_for(gauges.refresh(metrics), timeout)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                metrics.observe_queue_refresh_failure()
                log.warning(
                    "archiver.metrics_refresh_failed",
                    error=redact(described(exc)),
                    wait_s=interval_s,
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=max(interval_s, 0.0))
    finally:
        await gauges.close()


# --- HTTP endpoint -----------------------------------------------------------------------------


class MetricsServer:
    """A running metrics endpoint. Use ``async with`` or call :meth:`close`.

    Attributes:
        host: the interface it listens on.
        port: the bound TCP port (the real one when 0 was asked for).
        url: base URL, e.g. ``http://127.0.0.1:9464`` (scrape ``url + "/metrics"``).
    """

    def __init__(self, runner: web.AppRunner, listener: asyncio.Server, host: str, port: int) -> None:
        self._runner = runner
        self._listener = listener
        self.host = host
        self.port = port
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{port}"

    async def close(self) -> None:
        """Stop listening and close every connection (idempotent)."""
        self._listener.close()
        await self._runner.cleanup()

    async def __aenter__(self) -> MetricsServer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


def build_metrics_app(
    metrics: Metrics,
    is_live: Callable[[], bool] = lambda: True,
    routes: Sequence[web.AbstractRouteDef] = (),
) -> web.Application:
    """The aiohttp application behind :func:`start_metrics_server` (``/metrics``, ``/healthz``).

    ``routes``: more handlers on the same listener (push ingestion, :mod:`archiver.ingest_http`).
    """
    from aiohttp import web

    async def serve_metrics(_request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def serve_health(_request: web.Request) -> web.Response:
        try:
            live = bool(is_live())
        except Exception:
            live = False
        if live:
            return web.Response(text="ok\n")
        return web.Response(text="unhealthy\n", status=503)

    @web.middleware
    async def unexpected_errors(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """A handler's unforeseen exception is one log line and a 500, never a traceback
        (aiohttp would print one to stderr for each such request)."""
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except Exception as exc:
            log.error(
                "archiver.listener_failed",
                path=request.path[:200],
                error=redact(described(exc)),
            )
            return web.json_response({"error": "internal error"}, status=500)

    app = web.Application(middlewares=[unexpected_errors])
    app.router.add_get("/metrics", serve_metrics)
    app.router.add_get("/healthz", serve_health)
    app.router.add_routes(routes)
    return app


async def start_metrics_server(
    metrics: Metrics,
    host: str = DEFAULT_METRICS_HOST,
    port: int = DEFAULT_METRICS_PORT,
    is_live: Callable[[], bool] = lambda: True,
    routes: Sequence[web.AbstractRouteDef] = (),
    *,
    idle_timeout_s: float = LISTENER_IDLE_TIMEOUT_S,
    max_connections: int = LISTENER_MAX_CONNECTIONS,
) -> MetricsServer:
    """Serve ``GET /metrics`` and ``GET /healthz`` in the running event loop.

    Args:
        metrics: what ``/metrics`` shows.
        host: interface; loopback by default (put a reverse proxy or a firewall rule in
            front before binding anything wider: the endpoint has no authentication).
        port: TCP port; 0 picks a free one (see ``MetricsServer.port``).
        is_live: ``/healthz`` answers 200 ``ok`` while it returns True, else (or when it
            raises) 503 ``unhealthy``.
        routes: more handlers on the same listener (see :func:`build_metrics_app`).
        idle_timeout_s: a connection without a whole request head for this long is closed
            (:data:`LISTENER_IDLE_TIMEOUT_S`).
        max_connections: connections open at once; more are closed as they come
            (:data:`LISTENER_MAX_CONNECTIONS`).

    Raises:
        ConfigError: the address cannot be bound (port in use, unknown host).
    """
    from aiohttp import web

    # No access log: a scrape every few seconds would drown the canonical log lines.
    # aiohttp's keep-alive timer also runs from the moment a connection opens, so it is the
    # deadline for a whole request head too (aiohttp's own default is an hour).
    runner = web.AppRunner(
        build_metrics_app(metrics, is_live, routes),
        logger=_listener_logger(),
        access_log=None,
        shutdown_timeout=1.0,
        keepalive_timeout=idle_timeout_s,
    )
    await runner.setup()
    try:
        listener = await asyncio.get_running_loop().create_server(
            _CappedConnections(runner, max_connections), host, port
        )
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(
            f"cannot serve metrics on {host}:{port}: {exc.strerror or exc} (choose another port or host)"
        ) from None
    except BaseException:
        await runner.cleanup()
        raise
    bound_port = int(listener.sockets[0].getsockname()[1])
    log.info("archiver.metrics_listening", url=f"http://{host}:{bound_port}/metrics")
    return MetricsServer(runner, listener, host, bound_port)


class _OneLine(logging.Handler):
    """aiohttp's own reports about a connection (a request it could not parse, a body it
    could not inflate, a client gone) as one warning line each, never a traceback."""

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        detail = described(exc) if exc is not None else ""
        log.warning("archiver.listener_error", message=redact(record.getMessage()), error=redact(detail))


def _listener_logger() -> logging.Logger:
    logger = logging.getLogger("archiver.listener")
    if not logger.handlers:
        logger.addHandler(_OneLine(logging.WARNING))
        logger.propagate = False
        logger.setLevel(logging.WARNING)
    return logger


class _Refused(asyncio.Protocol):
    """A connection over the cap: closed as soon as it is made."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


def _waits_for_a_head(handler: Any) -> bool:
    """aiohttp's own test of an idle connection (its keep-alive timer closes such a one)."""
    waiter = getattr(handler, "_waiter", None)
    return waiter is not None and not waiter.done()


def _serves_nothing(handler: Any) -> bool:
    """No request in its handler and none awaited: answered, lingering before it closes."""
    return getattr(handler, "_current_request", None) is None and getattr(handler, "_waiter", None) is None


class _CappedConnections:
    """The protocol factory of the listener: aiohttp's, up to ``limit`` open connections.

    At the cap a newcomer closes the oldest idle connection (one waiting for a request head:
    half sent, or kept alive after its answer) and takes its place; it is refused only
    when every connection is serving a request. Idle connections cost a client nothing to
    hold, so without this one client opening ``limit`` of them, renewed every head
    timeout, kept every ``/healthz`` probe and ``/metrics`` scrape out.
    """

    _LOG_EVERY_S = 60.0

    def __init__(self, runner: web.AppRunner, limit: int) -> None:
        self._runner = runner
        self._limit = limit
        self._refused = 0
        self._evicted = 0
        self._logged_at = -self._LOG_EVERY_S

    def __call__(self) -> asyncio.BaseProtocol:
        server = self._runner.server
        assert server is not None  # set up before listening
        connections = server.connections
        if len(connections) < self._limit or self._close_oldest_idle(connections):
            return server()
        self._refused += 1
        self._log_busy()
        return _Refused()

    def _close_oldest_idle(self, connections: list[Any]) -> bool:
        """Close a connection that serves no request: first one already answered with
        ``Connection: close`` (aiohttp lingers up to 10 s reading the body it was sent),
        else the oldest waiting for a request head; False when every one serves a request."""
        open_ = [handler for handler in connections if getattr(handler, "transport", None) is not None]
        if len(open_) < self._limit:
            return True  # the rest are closing already
        closing = [h for h in open_ if not getattr(h, "_keepalive", True) and _serves_nothing(h)]
        idle = [h for h in open_ if _waits_for_a_head(h)]
        for handler in closing[:1] or idle[:1]:
            handler.force_close()
            self._evicted += 1
            self._log_busy()
            return True
        return False

    def _log_busy(self) -> None:
        now = time.monotonic()
        if now - self._logged_at >= self._LOG_EVERY_S:  # one line a minute, however many come
            self._logged_at = now
            log.warning(
                "archiver.listener_busy",
                max_connections=self._limit,
                refused=self._refused,
                idle_closed=self._evicted,
            )
