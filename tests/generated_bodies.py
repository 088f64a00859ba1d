"""A loopback Responses server in its own process whose bodies a test writes as code.

Large hostile bodies are made in the server's process, so neither their making nor
their bytes count in the memory of the run a test measures. The test gives the source
of ``def body(rid: str) -> bytes`` (with any imports it needs), which may read
``sys.argv[1:]``; :func:`serve_generated` serves ``GET /v1/responses/{rid}`` with it,
and ``GET /v1/responses/{rid}/input_items`` with
``def input_items(rid: str, after: str | None) -> bytes`` when the source defines one
(``after``: the request's ``after`` query, None for the first page).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from tests.acceptance.conftest import base_env

_SERVER = r"""
import asyncio, sys
from aiohttp import web

async def get(request):
    return web.Response(body=body(request.match_info["rid"]), content_type="application/json")

async def items(request):
    page = input_items(request.match_info["rid"], request.query.get("after"))
    return web.Response(body=page, content_type="application/json")

async def main():
    app = web.Application()
    app.router.add_get("/v1/responses/{rid}", get)
    if "input_items" in globals():
        app.router.add_get("/v1/responses/{rid}/input_items", items)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(f"http://127.0.0.1:{runner.addresses[0][1]}/v1", flush=True)
    await asyncio.sleep(600)

asyncio.run(main())
"""


@contextmanager
def serve_generated(body_source: str, *args: str) -> Iterator[str]:
    """Serve the bodies ``body_source`` makes (see the module docstring); yields the base URL."""
    script = body_source + "\n" + _SERVER
    server = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, env=base_env())
    assert server.stdout is not None
    try:
        yield server.stdout.readline().decode().strip()
    finally:
        server.terminate()
        server.wait(timeout=10)
        server.stdout.close()
