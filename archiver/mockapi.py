"""A mock of the OpenAI-compatible Responses API (``GET {base_url}/responses/{id}``).

Tests of the whole project talk real HTTP to it, users point their own pipelines at it
(``archiver mock-server``), and benchmarks run it as a separate process, so the hot path
only looks up a pre-rendered body: bodies are serialized once per (ID, fetch phase, seed)
with orjson and cached.

Routes (``prefix`` defaults to ``/v1``):

- ``GET {prefix}/responses/{response_id}``: the response (the ID arrives URL-quoted).
- ``GET /_mock/stats``: ``{"requests_total", "requests_by_id", "status_counts",
  "in_flight", "max_in_flight", "dropped_total"}``. ``status_counts`` is keyed by the
  status code as a string; connections dropped on purpose count in ``dropped_total``.
- ``GET {prefix}/responses/{response_id}/input_items``: the input items, paginated as
  on OpenAI (``limit`` 1-100, default 20; ``after``; ``order`` asc/desc, default desc;
  ``has_more``, ``first_id``, ``last_id``); see :func:`archiver.mockinputs.input_items_for`. Served under a
  DashScope path (one with ``/compatible-mode/``), a page also carries DashScope's list
  fields: ``id``, ``model`` and ``created_at`` in *milliseconds*.
- ``POST /_mock/reset``: clears the stats and the per-ID fetch counters.

The stats routes never require the API key.

Scenarios (:mod:`archiver.mockscenarios`): the ID chooses the behaviour, deterministically
(``resp_<scenario><N>_<anything>``); any other ID is a normal completed response
(:mod:`archiver.mockbodies`).

With ``MockConfig.api_key`` set, a missing or wrong ``Authorization: Bearer`` gets 401
``invalid_api_key`` (the presented key is never echoed). With ``bodies_dir`` set, the
JSON files there are served byte-exact for their top-level ``id`` (the first file in
name order wins a duplicate ID); ``bodies_only`` turns every other ID into a 404.
``fail_rate`` turns that fraction of requests for normal IDs (``ok``, IDs without a
scenario, files from ``bodies_dir``) into a transient fault
(429 with Retry-After, 500 or 503), decided by a hash of (seed, ID, fetch number), so a
given fetch always fails the same way whatever the request interleaving.

``include[]`` query values (repeated; ``include`` is read too) are recorded per ID in
``MockStats.include_by_id`` (requests without any are not). A request that carries a value listed in
``MockConfig.reject_include`` gets OpenAI's 400 ``invalid_value`` naming it (``param``
``include[N]``, the message listing the values still supported), on both routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import orjson
from aiohttp import web

from archiver.mockbodies import GATED_INCLUDE, body_for, load_bodies
from archiver.mockinputs import input_items_for, input_items_page
from archiver.mockscenarios import (
    INVALID_KEY_BODY,
    error_body,
    injected_fault,
    json_response,
    not_found_body,
    retry_after_headers,
    scenario_answer,
    scenario_of,
    within,
)
from archiver.mockstats import INCLUDE_RECORDS, MockStats, max_in_window

__all__ = [
    "GATED_INCLUDE",
    "MockConfig",
    "MockServer",
    "MockStats",
    "body_for",
    "build_app",
    "input_items_for",
    "load_bodies",
    "max_in_window",
    "serve_forever",
    "start_mock_server",
]


@dataclass(frozen=True)
class MockConfig:
    """How the mock server behaves. Every field has a harmless default."""

    latency_ms: float = 0.0
    """Added to every responses request."""
    jitter_ms: float = 0.0
    """Uniform +- jitter around ``latency_ms`` (seeded RNG)."""
    api_key: str | None = None
    """When set, requests must carry ``Authorization: Bearer <key>``, else 401."""
    fail_rate: float = 0.0
    """Fraction of requests for normal IDs answered with a transient fault."""
    retry_after_s: float = 1.0
    """Sent as ``retry-after`` (seconds) and ``retry-after-ms`` on 429 answers."""
    hang_s: float = 300.0
    """How long a ``hang`` scenario sleeps before answering."""
    bodies_dir: Path | None = None
    """Serve the JSON files in this directory, keyed by top-level ``id``, byte-exact."""
    bodies_only: bool = False
    """With ``bodies_dir``: unknown IDs get 404 instead of generated bodies."""
    seed: int = 0
    prefix: str = "/v1"
    """Path of the base URL, e.g. ``http://127.0.0.1:PORT/v1``."""
    reject_include: frozenset[str] = frozenset()
    """``include[]`` values answered with a 400 naming them (a provider that does not know them)."""


class _MockApi:
    """Request handlers and the state they share (one per application)."""

    def __init__(self, config: MockConfig) -> None:
        self.config = config
        self.dashscope = "/compatible-mode/" in _normalized_prefix(config.prefix) + "/"
        self.stats = MockStats()
        self.jitter_rng = random.Random(config.seed)
        self.bodies = load_bodies(config.bodies_dir) if config.bodies_dir else {}
        self.closing = asyncio.Event()
        self.expected_auth = f"Bearer {config.api_key}".encode() if config.api_key else None
        self.retry_headers = retry_after_headers(config.retry_after_s)

    async def get_response(self, request: web.Request) -> web.StreamResponse:
        """``GET {prefix}/responses/{response_id}``."""
        stats = self.stats
        # aiohttp already unquoted the path segment (%3A -> ":", %2F stays inside it);
        # unquoting again would corrupt IDs that contain "%".
        response_id = request.match_info["response_id"]
        fetch_number = stats.requests_by_id.get(response_id, 0) + 1
        stats.requests_by_id[response_id] = fetch_number
        stats.requests_total += 1
        stats.arrivals.append(time.monotonic())
        stats.in_flight += 1
        if stats.in_flight > stats.max_in_flight:
            stats.max_in_flight = stats.in_flight
        try:
            await self.sleep_latency()
            response = await self.answer(request, response_id, fetch_number)
            if response is None:
                stats.dropped_total += 1
                # Nothing may be written: aiohttp sees a closed transport and stays quiet.
                return web.Response(status=499)
            key = str(response.status)
            stats.status_counts[key] = stats.status_counts.get(key, 0) + 1
            return response
        finally:
            stats.in_flight -= 1

    async def get_input_items(self, request: web.Request) -> web.StreamResponse:
        """``GET {prefix}/responses/{response_id}/input_items`` (paginated like OpenAI's)."""
        stats = self.stats
        response_id = request.match_info["response_id"]
        number = stats.input_items_by_id.get(response_id, 0) + 1
        stats.input_items_by_id[response_id] = number
        stats.input_items_total += 1
        stats.arrivals.append(time.monotonic())
        stats.in_flight += 1
        if stats.in_flight > stats.max_in_flight:
            stats.max_in_flight = stats.in_flight
        try:
            await self.sleep_latency()
            if not self.authorized(request):
                return json_response(401, INVALID_KEY_BODY)
            name, count = scenario_of(response_id)
            if name == "notfound" and within(count, stats.requests_by_id.get(response_id, 0)):
                return json_response(404, not_found_body(response_id))
            if name == "noinputs":  # a provider without the input_items endpoint
                return json_response(404, error_body("Not found.", "NotFound"))
            if name == "inputflaky" and within(count, number):
                return json_response(
                    503, error_body("The service is temporarily unavailable.", "ServiceUnavailable")
                )
            include = self.requested_include(request, response_id)
            rejected = self.include_rejection(include)
            if rejected is not None:
                return rejected
            page = input_items_page(response_id, request.query, include, dashscope=self.dashscope)
            if page is None:
                return json_response(
                    400, error_body("Invalid pagination parameters.", "InvalidParameter", "InvalidParameter")
                )
            return json_response(200, page)
        finally:
            stats.in_flight -= 1

    async def sleep_latency(self) -> None:
        config = self.config
        if config.latency_ms <= 0 and config.jitter_ms <= 0:
            return
        jitter = self.jitter_rng.uniform(-config.jitter_ms, config.jitter_ms)
        delay_ms = config.latency_ms + jitter
        if delay_ms > 0:
            await asyncio.sleep(delay_ms / 1000)

    def requested_include(self, request: web.Request, response_id: str) -> list[str]:
        """The request's ``include[]`` values (recorded in the stats)."""
        include = [*request.query.getall("include[]", []), *request.query.getall("include", [])]
        if include:
            records = self.stats.include_by_id.setdefault(response_id, [])
            if len(records) < INCLUDE_RECORDS:
                records.append(include)
        return include

    def include_rejection(self, include: list[str]) -> web.Response | None:
        """OpenAI's 400 for the first requested value in ``reject_include``, or None."""
        for index, value in enumerate(include):
            if value in self.config.reject_include:
                supported = ", ".join(f"'{v}'" for v in GATED_INCLUDE if v not in self.config.reject_include)
                error = {
                    "message": f"Invalid value: '{value}'. Supported values are: {supported}.",
                    "type": "invalid_request_error",
                    "param": f"include[{index}]",
                    "code": "invalid_value",
                }
                return json_response(400, orjson.dumps({"error": error}))
        return None

    def authorized(self, request: web.Request) -> bool:
        if self.expected_auth is None:
            return True
        presented = request.headers.get("Authorization", "").encode("utf-8", "surrogatepass")
        return hmac.compare_digest(presented, self.expected_auth)

    async def answer(self, request: web.Request, response_id: str, fetch_number: int) -> web.Response | None:
        """The answer to one fetch, or None when the connection was dropped instead."""
        if not self.authorized(request):
            return json_response(401, INVALID_KEY_BODY)
        include = self.requested_include(request, response_id)
        rejected = self.include_rejection(include)
        if rejected is not None:
            return rejected
        config = self.config
        stored = self.bodies.get(response_id)
        if stored is not None:
            return self.fault(response_id, fetch_number) or json_response(200, stored)
        if config.bodies_only:
            return json_response(404, not_found_body(response_id))

        name, count = scenario_of(response_id)
        if name is None or name == "ok":
            fault = self.fault(response_id, fetch_number)
            if fault is not None:
                return fault
        elif name == "hang":
            if within(count, fetch_number):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.closing.wait(), config.hang_s)
        elif within(count, fetch_number):
            early = scenario_answer(request, name, response_id, self.retry_headers)
            if early is not None or name == "reset":
                return early
        body = body_for(response_id, fetch_number, config.seed, include)
        if name == "garbage":
            return web.Response(status=200, body=body, content_type="text/html")
        return json_response(200, body)

    def fault(self, response_id: str, fetch_number: int) -> web.Response | None:
        """A transient fault for ``fail_rate`` of normal fetches, or None."""
        config = self.config
        return injected_fault(
            response_id,
            fetch_number,
            seed=config.seed,
            fail_rate=config.fail_rate,
            retry_headers=self.retry_headers,
        )

    async def get_stats(self, request: web.Request) -> web.Response:
        """``GET /_mock/stats``."""
        return json_response(200, orjson.dumps(self.stats.as_dict()))

    async def post_reset(self, request: web.Request) -> web.Response:
        """``POST /_mock/reset``."""
        self.stats.reset()
        return json_response(200, b'{"reset":true}')


_API_KEY = web.AppKey("archiver_mock_api", _MockApi)


def _normalized_prefix(prefix: str) -> str:
    stripped = prefix.strip("/")
    return f"/{stripped}" if stripped else ""


def build_app(config: MockConfig) -> web.Application:
    """The mock Responses API as an aiohttp application.

    Args:
        config: Scenario knobs; ``bodies_dir`` is read here, once.
    """
    api = _MockApi(config)
    app = web.Application()
    app[_API_KEY] = api
    prefix = _normalized_prefix(config.prefix)
    app.router.add_get(f"{prefix}/responses/{{response_id}}", api.get_response)
    app.router.add_get(f"{prefix}/responses/{{response_id}}/input_items", api.get_input_items)
    app.router.add_get("/_mock/stats", api.get_stats)
    app.router.add_post("/_mock/reset", api.post_reset)

    async def release_hangs(app: web.Application) -> None:
        api.closing.set()

    app.on_shutdown.append(release_hangs)
    return app


def _base_url(host: str, port: int, prefix: str) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}{_normalized_prefix(prefix)}"


class MockServer:
    """A running mock server. Use ``async with`` or call ``close()``."""

    def __init__(self, runner: web.AppRunner, base_url: str, stats: MockStats) -> None:
        self._runner = runner
        self.base_url = base_url
        self.stats = stats

    async def close(self) -> None:
        """Stop listening, release hung requests and close every connection."""
        await self._runner.cleanup()

    async def __aenter__(self) -> MockServer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


async def _start(config: MockConfig, host: str, port: int) -> tuple[web.AppRunner, str, MockStats]:
    app = build_app(config)
    # handler_cancellation: a client that gives up on a hang must not leave the handler
    # sleeping (and counted in flight) for hang_s.
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_port = runner.addresses[0][1]
    return runner, _base_url(host, bound_port, config.prefix), app[_API_KEY].stats


async def start_mock_server(
    config: MockConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> MockServer:
    """Start the mock server in the running event loop.

    Args:
        config: Scenario knobs (defaults: no latency, no key, no faults).
        host: Interface to listen on.
        port: TCP port; 0 picks a free one (see ``MockServer.base_url``).
    """
    runner, base_url, stats = await _start(config or MockConfig(), host, port)
    return MockServer(runner, base_url, stats)


async def serve_forever(
    config: MockConfig, host: str, port: int, ready: Callable[[str], None] | None = None
) -> None:
    """Run the mock server until cancelled (the ``archiver mock-server`` command).

    Args:
        config: Scenario knobs.
        host: Interface to listen on.
        port: TCP port; 0 picks a free one.
        ready: Called once with the base URL when the server listens.
    """
    runner, base_url, _ = await _start(config, host, port)
    try:
        if ready is not None:
            ready(base_url)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
