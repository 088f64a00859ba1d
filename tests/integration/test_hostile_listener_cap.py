"""The listener's connection cap attacked: can a client that never authenticates hold every
connection, so that systemd's and Prometheus's ``/healthz`` and ``/metrics`` are refused?

Real listener (``start_metrics_server``), raw sockets over loopback. The cap is lowered to
a few connections so the tests take a second; the behaviour is the same at 256.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiohttp import web

from tests.integration.test_hostile_listener import _closed_within, _connect, raw_exchange, status_of
from tests.integration.test_push_ingest import secret_files

pytestmark = pytest.mark.timeout(60)

CAP = 8
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


async def _healthz(url: str) -> int | None:
    """The status of one ``GET /healthz`` on a new connection, None when it was refused."""
    try:
        return status_of(await raw_exchange(url, HEALTHZ, timeout=3.0))
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


@pytest.mark.parametrize("idle", ["half a request head", "a kept-alive connection"])
async def test_idle_connections_cannot_keep_healthz_from_a_probe(idle: str) -> None:
    """Before the fix, CAP connections that sent half a head (renewed every 20 s, the head
    timeout) or that asked once and kept the connection alive (renewed by asking again)
    made every probe's connection close at once: systemd or a load balancer saw the daemon
    dead and Prometheus saw no scrape, for as long as a single unauthenticated client
    wanted. Now a new connection over the cap closes the oldest idle one instead."""
    from archiver.metrics import Metrics, start_metrics_server

    async with await start_metrics_server(Metrics(), port=0, max_connections=CAP) as server:
        held = [await _connect(server.url) for _ in range(CAP)]
        for reader, writer in held:
            if idle == "half a request head":
                writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            else:
                writer.write(HEALTHZ)
                assert (await reader.readuntil(b"ok\n")).startswith(b"HTTP/1.1 200")
        await asyncio.sleep(0.1)
        try:
            assert [await _healthz(server.url) for _ in range(3)] == [200, 200, 200]
        finally:
            for _, writer in held:
                writer.close()


async def test_a_request_being_served_is_never_closed_for_a_newcomer() -> None:
    """The control: only idle connections make room. A request in its handler keeps its
    connection, and when every connection is serving one, a newcomer is refused (the cap
    still bounds descriptors)."""
    from archiver.metrics import Metrics, start_metrics_server

    release = asyncio.Event()

    async def slow(_request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="done\n")

    routes = [web.get("/slow", slow)]
    async with await start_metrics_server(Metrics(), port=0, max_connections=CAP, routes=routes) as server:
        busy = [await _connect(server.url) for _ in range(CAP - 1)]
        for _, writer in busy:
            writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        idle = await _connect(server.url)
        await asyncio.sleep(0.2)
        assert await _healthz(server.url) == 200  # made room by closing the idle one
        assert await _closed_within(idle[0], 1.0) == b""
        idle[1].close()
        last = await _connect(server.url)
        last[1].write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.sleep(0.2)
        assert await _healthz(server.url) is None  # every connection busy: refused
        release.set()
        for reader, writer in [*busy, last]:
            assert (await reader.readuntil(b"done\n")).startswith(b"HTTP/1.1 200")
            writer.close()


async def test_trickled_webhook_bodies_cannot_fill_every_connection(sqlite_url: str, tmp_path: Path) -> None:
    """At the real limits (256 connections, 32 MiB of bodies): a webhook body is read before
    its signature can be checked, so 256 connections each trickling a 100-byte body (26 KB
    of the budget, 30 s each) filled the cap with requests being served, and every probe was
    refused. Bodies read at once are now capped below the connections, so the rest get 503
    at once and the probe gets through."""
    from archiver.db import open_database
    from archiver.ingest_http import ingest_routes, load_ingest_secrets
    from archiver.metrics import LISTENER_MAX_CONNECTIONS, Metrics, start_metrics_server
    from archiver.queue import QueueStore

    async with open_database(sqlite_url) as engine:
        routes = ingest_routes(QueueStore(engine), load_ingest_secrets(secret_files(tmp_path)))
        async with await start_metrics_server(Metrics(), port=0, routes=routes) as server:
            held = []
            for _ in range(LISTENER_MAX_CONNECTIONS):
                reader, writer = await _connect(server.url)
                writer.write(b"POST /webhooks/default HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nx")
                held.append((reader, writer))
            await asyncio.sleep(0.3)
            try:
                assert await _healthz(server.url) == 200
            finally:
                for _, writer in held:
                    writer.close()
