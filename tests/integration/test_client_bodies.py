"""Bodies are read as bounded streams: real HTTP over loopback to servers written here.

Compression is decoded by archiver itself, in pieces, so the limit counts decompressed
bytes and a bomb stops at the limit; error bodies are cut at 1 MiB; encodings that were
not asked for are refused; the byte budget counts bytes while they are being read.
"""

from __future__ import annotations

import asyncio
import gzip
import resource
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from archiver.budget import READ_PIECE, ByteBudget
from archiver.client import ERROR_BODY_LIMIT, BodyTooLarge, ResponsesClient, UndecodableBody

pytestmark = pytest.mark.timeout(60)

MiB = 1 << 20
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_route("GET", "/v1/responses/{tail:.*}", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}/v1"

    yield start
    for runner in runners:
        await runner.cleanup()


def client(base_url: str, max_body: int = 4 * MiB) -> ResponsesClient:
    return ResponsesClient(base_url, "k" * 20, concurrency=4, request_timeout=20, max_body_bytes=max_body)


def encoded(data: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.compress(data)
    if encoding == "deflate":
        return zlib.compress(data)
    if encoding == "raw-deflate":
        c = zlib.compressobj(wbits=-15)
        return c.compress(data) + c.flush()
    return data


def bomb(encoding: str, wbits: int) -> Handler:
    """An endless stream of compressed zeros (about 1000:1), made on the fly."""

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Encoding": encoding, "Content-Type": "application/json"})
        await resp.prepare(request)
        compressor = zlib.compressobj(9, zlib.DEFLATED, wbits)
        zeros = bytes(MiB)
        try:
            for _ in range(10 * 1024):  # 10 GiB decompressed, if anyone read it all
                await resp.write(compressor.compress(zeros))
                # Writes this small never wait: yield, so a client that hung up ends the loop
                # here instead of after seconds of compressing zeros for no one.
                await asyncio.sleep(0)
        except (ConnectionError, RuntimeError):
            pass
        return resp

    return handler


@pytest.mark.parametrize("encoding", ["identity", "gzip", "deflate", "raw-deflate"])
async def test_bodies_are_decoded_byte_exact(serve: Any, encoding: str) -> None:
    body = b'{"id": "resp_x", "text": "' + bytes(range(32, 127)) * 3000 + b'"}'

    async def handler(request: web.Request) -> web.Response:
        header = "deflate" if encoding == "raw-deflate" else encoding
        return web.Response(body=encoded(body, encoding), headers={"Content-Encoding": header})

    async with client(await serve(handler)) as c:
        exchange = await c.fetch("resp_x")
    assert exchange.status_code == 200
    assert exchange.body == body


@pytest.mark.parametrize("chunk", [1, 2, 7])
@pytest.mark.parametrize("encoding", ["deflate", "raw-deflate", "gzip"])
async def test_compressed_bodies_in_tiny_chunks(serve: Any, encoding: str, chunk: int) -> None:
    """A zlib header split across pieces must not make raw deflate look corrupt, or the reverse."""
    body = b'{"id": "resp_x", "text": "' + b"tiny pieces " * 400 + b'"}'
    wire = encoded(body, encoding)

    async def handler(request: web.Request) -> web.StreamResponse:
        header = "deflate" if encoding == "raw-deflate" else encoding
        resp = web.StreamResponse(headers={"Content-Encoding": header})
        await resp.prepare(request)
        for i in range(0, len(wire), chunk):
            await resp.write(wire[i : i + chunk])
            if i < 64:
                await asyncio.sleep(0.002)  # the first pieces arrive one by one
        return resp

    async with client(await serve(handler)) as c:
        assert (await c.fetch("resp_x")).body == body


async def test_multi_member_gzip_is_read_whole(serve: Any) -> None:
    parts = [b'{"id": "resp_x", ', b'"a": 1', b"}"]

    async def handler(request: web.Request) -> web.Response:
        return web.Response(
            body=b"".join(gzip.compress(p) for p in parts), headers={"Content-Encoding": "gzip"}
        )

    async with client(await serve(handler)) as c:
        assert (await c.fetch("resp_x")).body == b"".join(parts)


@pytest.mark.parametrize(("encoding", "wbits"), [("gzip", 31), ("deflate", 15), ("deflate", -15)])
async def test_a_compression_bomb_stops_at_the_limit(serve: Any, encoding: str, wbits: int) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    async with client(await serve(bomb(encoding, wbits)), max_body=8 * MiB) as c:
        with pytest.raises(BodyTooLarge) as raised:
            await asyncio.wait_for(c.fetch("resp_bomb"), 20)
    assert "--max-body-mb" in str(raised.value)
    assert 8 * MiB < raised.value.read <= 8 * MiB + READ_PIECE
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 200 * 1024, f"the process grew by {grown_kib} KiB reading a bomb"


async def test_an_endless_plain_body_stops_at_the_limit(serve: Any) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        try:
            while True:
                await resp.write(b"x" * READ_PIECE)
        except (ConnectionError, RuntimeError):
            return resp

    async with client(await serve(handler), max_body=2 * MiB) as c:
        with pytest.raises(BodyTooLarge):
            await asyncio.wait_for(c.fetch("resp_endless"), 20)


async def test_a_body_exactly_at_the_limit_is_read(serve: Any) -> None:
    body = b"y" * (2 * MiB)

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=gzip.compress(body), headers={"Content-Encoding": "gzip"})

    async with client(await serve(handler), max_body=2 * MiB) as c:
        assert (await c.fetch("resp_x")).body == body


async def test_error_bodies_are_cut_not_refused(serve: Any) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=500, body=b"e" * (5 * MiB))

    async with client(await serve(handler), max_body=64 * MiB) as c:
        exchange = await c.fetch("resp_x")
    assert exchange.status_code == 500
    assert exchange.truncated
    assert len(exchange.body) == ERROR_BODY_LIMIT


@pytest.mark.parametrize("encoding", ["br", "zstd", "gzip, gzip", "compress"])
async def test_encodings_not_asked_for_are_refused(serve: Any, encoding: str) -> None:
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Accept-Encoding", ""))
        return web.Response(body=b"\x00\x01garbage", headers={"Content-Encoding": encoding})

    async with client(await serve(handler)) as c:
        with pytest.raises(UndecodableBody):
            await c.fetch("resp_x")
    assert seen == ["gzip, deflate"]


async def test_corrupt_gzip_is_refused(serve: Any) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(
            body=gzip.compress(b'{"id": 1}')[:-12] + b"junkjunk", headers={"Content-Encoding": "gzip"}
        )

    async with client(await serve(handler)) as c:
        with pytest.raises(UndecodableBody):
            await c.fetch("resp_x")


async def test_the_budget_counts_bytes_while_they_are_read(serve: Any) -> None:
    """Four slow 3 MiB bodies, a 4 MiB budget and a slow writer: at most one body past it."""
    release = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        for i in range(48):  # 3 MiB
            await resp.write(b"z" * READ_PIECE)
            if i == 8:
                await release.wait()
        return resp

    budget = ByteBudget(4 * MiB)
    base = await serve(handler)
    written: list[int] = []

    async def fetch_and_write(c: ResponsesClient, i: int) -> None:
        reservation = budget.reservation()
        body = (await c.fetch(f"resp_{i}", reservation=reservation)).body
        assert len(body) == 3 * MiB
        reservation.keep(len(body))
        await asyncio.sleep(0.2)  # the writer takes its time
        budget.release(len(body))
        written.append(i)

    async with client(base, max_body=8 * MiB) as c:
        tasks = [asyncio.create_task(fetch_and_write(c, i)) for i in range(4)]
        # Every reader has its first pieces counted (a counter, no event to wait on).
        while budget.used < 4 * 9 * READ_PIECE:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        release.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
    assert sorted(written) == [0, 1, 2, 3]
    # max_held + one body past it (the overflow reader) + a piece per reader at most;
    # without the budget the four bodies would have been held at once (12 MiB).
    assert budget.peak <= 4 * MiB + 3 * MiB + 4 * READ_PIECE
    assert budget.used == 0
    assert budget.reading == 0


async def test_a_full_budget_makes_readers_wait_without_deadlock() -> None:
    budget = ByteBudget(10)
    a, b = budget.reservation(), budget.reservation()
    await a.take(8)
    await a.take(8)  # a becomes the overflow reader
    waiting = asyncio.create_task(b.take(4))
    await asyncio.sleep(0.01)
    assert not waiting.done()  # b waits: the budget is full and a holds the overflow
    a.keep(0)  # a's read failed: everything back
    await asyncio.wait_for(waiting, 1)
    assert budget.used == 4
    b.keep(4)  # finished: held until the writer frees it
    assert (budget.used, budget.reading) == (4, 0)
    c = budget.reservation()
    await c.take(4)
    blocked = asyncio.create_task(c.take(8))  # full, but a finished body will be freed: wait
    await asyncio.sleep(0.01)
    assert not blocked.done()
    budget.release(4)  # the writer wrote b's body
    await asyncio.wait_for(blocked, 1)
    c.keep(0)
    assert budget.used == 0
