"""A hostile Responses API for tests: compression bombs, endless bodies, bodies around a size limit.

Run it as its own process, so its memory is not counted with the archiver's::

    python tests/hostile_server.py --limit-mb 8 --ok 100

It binds 127.0.0.1 on a free port and prints its base URL (``http://127.0.0.1:PORT/v1``) as
the first line on stdout. Routes, under ``/v1/responses/{id}``:

- ``resp_gzipbomb``: ``Content-Encoding: gzip``, zeros that decompress to 10 GiB (about
  10 MB on the wire); ``resp_deflatebomb``: the same as ``deflate`` (zlib format).
- ``resp_endless``: a chunked body of valid-looking JSON text that never ends.
- ``resp_over`` / ``resp_under``: valid Response bodies 1 MiB over / under ``--limit-mb``
  (:func:`over_size`, :func:`under_size`, :func:`sized_body`).
- ``resp_under_NN``: as many more just-under-the-limit bodies as a test asks for.
- ``resp_items``: a small valid body whose ``/input_items`` pages never end (each page
  about 4 MB of items, ``has_more: true``, a new ``last_id`` every time).
- ``resp_ok_000`` ...: small valid bodies (:func:`ok_body`), with one small input-items page.
- anything else: a 404 with OpenAI's error envelope.

``GET /_stats`` answers ``{id: {"requests": n, "bytes_sent": n}}`` (bytes on the wire,
input-items pages counted under ``{id}/input_items``).

Every body is a pure function of the ID and the limit, so a test can rebuild what the
server sent (e.g. to compare ``archiver show`` with it) by importing this module. The
server's own memory stays small: the bombs repeat one precomputed compressed block, the
endless bodies are written chunk by chunk under the client's back-pressure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import struct
import sys
import zlib
from collections import defaultdict
from typing import Any

from aiohttp import web

MiB = 1024 * 1024

OK_PREFIX = "resp_ok_"
UNDER_PREFIX = "resp_under_"
"""``resp_under_NN``: more bodies like ``resp_under``, each its own (many at once)."""
HOSTILE_IDS = (
    "resp_gzipbomb",
    "resp_deflatebomb",
    "resp_endless",
    "resp_over",
    "resp_under",
    "resp_items",
)
BOMB_DECOMPRESSED = 10 * 1024 * MiB
BOMB_BLOCK = 16 * MiB  # zeros per repeated compressed block (about 16 KB on the wire)
ITEMS_PER_PAGE = 100
ITEM_TEXT_CHARS = 40_000  # 100 items of ~40 KB: a page of ~4 MB
ENDLESS_CHUNK = 256 * 1024

_SENTENCE = (
    "Archived responses are read as streams under a hard limit; "
    "this sentence repeats to make a large but valid body. "
)


def ok_ids(count: int) -> list[str]:
    """``resp_ok_000`` ... for ``count`` ordinary IDs."""
    return [f"{OK_PREFIX}{i:03d}" for i in range(count)]


def under_size(limit_mb: float) -> int:
    """Size in bytes of ``resp_under``: 1 MiB under the limit."""
    return int(limit_mb * MiB) - MiB


def over_size(limit_mb: float) -> int:
    """Size in bytes of ``resp_over``: 1 MiB over the limit."""
    return int(limit_mb * MiB) + MiB


def _response(response_id: str, text: str, *, seq: int = 0) -> dict[str, Any]:
    """A completed Response object shaped like the corpus (one assistant message)."""
    return {
        "id": response_id,
        "object": "response",
        "created_at": 1787041707 + seq,
        "status": "completed",
        "completed_at": 1787041708 + seq,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "metadata": {},
        "model": "m",
        "output": [
            {
                "type": "message",
                "id": f"msg_{response_id}",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ],
        "parallel_tool_calls": True,
        "store": True,
        "temperature": 1.0,
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "usage": {
            "input_tokens": 12,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 34 + seq,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 46 + seq,
        },
    }


def ok_body(response_id: str) -> bytes:
    """The small valid body of an ordinary ID (non-ASCII on purpose: ``show`` must be byte-exact)."""
    seq = sum(response_id.encode()) % 97
    text = f"Réponse n°{seq} pour {response_id}: ✓ archived as sent."
    return json.dumps(_response(response_id, text, seq=seq), ensure_ascii=False, indent=2).encode()


def filler(size: int) -> bytes:
    """``size`` bytes of plain ASCII text, safe inside a JSON string."""
    unit = _SENTENCE.encode()
    return (unit * (size // len(unit) + 1))[:size]


def sized_body(response_id: str, size: int) -> bytes:
    """A valid Response body of exactly ``size`` bytes (its text fills the rest)."""
    mark = "@@FILL@@"
    head, tail = json.dumps(_response(response_id, mark)).encode().split(mark.encode())
    pad = size - len(head) - len(tail)
    if pad < 0:
        raise ValueError(f"{size} bytes is too small for a Response body")
    return head + filler(pad) + tail


def small_items_page(response_id: str) -> bytes:
    """The one input-items page of every ID but ``resp_items``."""
    item = {
        "id": f"msg_in_{response_id}",
        "type": "message",
        "role": "user",
        "status": "completed",
        "content": [{"type": "input_text", "text": f"Question for {response_id}"}],
    }
    page = {
        "object": "list",
        "data": [item],
        "first_id": item["id"],
        "last_id": item["id"],
        "has_more": False,
    }
    return json.dumps(page).encode()


def endless_items_page(page_no: int) -> bytes:
    """Page ``page_no`` of ``resp_items``: about 4 MB of items, and always more to come."""
    text = filler(ITEM_TEXT_CHARS).decode()
    data = [
        {
            "id": f"msg_items_p{page_no}_{i:03d}",
            "type": "message",
            "role": "user",
            "status": "completed",
            "content": [{"type": "input_text", "text": text}],
        }
        for i in range(ITEMS_PER_PAGE)
    ]
    page = {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"],
        "last_id": data[-1]["id"],
        "has_more": True,
    }
    return json.dumps(page).encode()


def _page_after(after: str | None) -> int:
    """The page number that follows the item ID ``after`` (0 for the first page)."""
    if not after or not after.startswith("msg_items_p"):
        return 0
    try:
        return int(after.removeprefix("msg_items_p").split("_", 1)[0]) + 1
    except ValueError:
        return 0


class _Bomb:
    """A compressed stream of zeros as a header, one repeated block and a trailer.

    After ``Z_FULL_FLUSH`` the compressor forgets its history, so the bytes for the next
    block of zeros are the same every time: the server repeats them instead of compressing
    gigabytes. The trailer's checksum is computed as the blocks go out.
    """

    def __init__(self, wbits: int) -> None:
        self.gzip = wbits > 15
        zeros = bytes(BOMB_BLOCK)
        compressor = zlib.compressobj(9, zlib.DEFLATED, wbits)
        first = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
        self.block = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
        self.header = first[: len(first) - len(self.block)]
        assert first.endswith(self.block), "a full flush should make the blocks repeat"
        self.zeros = zeros

    def trailer(self, checksum: int, size: int) -> bytes:
        final_block = b"\x03\x00"  # an empty final block (fixed Huffman, end-of-block)
        if self.gzip:
            return final_block + struct.pack("<II", checksum & 0xFFFFFFFF, size & 0xFFFFFFFF)
        return final_block + struct.pack(">I", checksum & 0xFFFFFFFF)

    def update(self, checksum: int) -> int:
        return zlib.crc32(self.zeros, checksum) if self.gzip else zlib.adler32(self.zeros, checksum)

    def initial(self) -> int:
        return 0 if self.gzip else 1


class HostileApi:
    """The handlers and what they share."""

    def __init__(self, limit_mb: float, ok_count: int) -> None:
        self.limit_mb = limit_mb
        self.ok = set(ok_ids(ok_count))
        self.gzip = _Bomb(31)
        self.deflate = _Bomb(15)
        self._sized: dict[str, bytes] = {}
        self.stats: dict[str, dict[str, int]] = defaultdict(lambda: {"requests": 0, "bytes_sent": 0})

    def sized(self, response_id: str) -> bytes:
        if response_id not in self._sized:
            under = response_id == "resp_under" or response_id.startswith(UNDER_PREFIX)
            size = under_size(self.limit_mb) if under else over_size(self.limit_mb)
            self._sized[response_id] = sized_body(response_id, size)
        return self._sized[response_id]

    async def get_response(self, request: web.Request) -> web.StreamResponse:
        response_id = request.match_info["response_id"]
        stats = self.stats[response_id]
        stats["requests"] += 1
        if response_id in ("resp_gzipbomb", "resp_deflatebomb"):
            bomb = self.gzip if response_id == "resp_gzipbomb" else self.deflate
            encoding = "gzip" if bomb.gzip else "deflate"
            return await self._bomb(request, bomb, encoding, stats)
        if response_id == "resp_endless":
            return await self._endless(request, response_id, stats)
        if response_id in ("resp_over", "resp_under") or response_id.startswith(UNDER_PREFIX):
            body = self.sized(response_id)
        elif response_id in self.ok or response_id == "resp_items":
            body = ok_body(response_id)
        else:
            return self._not_found(response_id)
        stats["bytes_sent"] += len(body)
        return web.Response(body=body, content_type="application/json")

    async def get_input_items(self, request: web.Request) -> web.StreamResponse:
        response_id = request.match_info["response_id"]
        stats = self.stats[f"{response_id}/input_items"]
        stats["requests"] += 1
        if response_id == "resp_items":
            body = endless_items_page(_page_after(request.query.get("after")))
        elif response_id in self.ok or response_id in HOSTILE_IDS:
            body = small_items_page(response_id)
        else:
            return self._not_found(response_id)
        stats["bytes_sent"] += len(body)
        return web.Response(body=body, content_type="application/json")

    async def get_stats(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(dict(self.stats))

    @staticmethod
    def _not_found(response_id: str) -> web.Response:
        error = {
            "error": {
                "message": f"Response with id '{response_id}' not found.",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        }
        return web.json_response(error, status=404)

    async def _bomb(
        self, request: web.Request, bomb: _Bomb, encoding: str, stats: dict[str, int]
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json", "Content-Encoding": encoding})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        checksum, size = bomb.initial(), 0
        try:
            await resp.write(bomb.header)
            stats["bytes_sent"] += len(bomb.header)
            while size < BOMB_DECOMPRESSED:
                await resp.write(bomb.block)
                stats["bytes_sent"] += len(bomb.block)
                checksum, size = bomb.update(checksum), size + BOMB_BLOCK
            await resp.write(bomb.trailer(checksum, size))
            await resp.write_eof()
        except (ConnectionError, OSError):
            pass  # the client gave up: that is the point
        return resp

    async def _endless(
        self, request: web.Request, response_id: str, stats: dict[str, int]
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        head = json.dumps(_response(response_id, "@@FILL@@")).encode().split(b'@@FILL@@"')[0]
        chunk = filler(ENDLESS_CHUNK)
        try:
            await resp.write(head)
            stats["bytes_sent"] += len(head)
            while True:
                await resp.write(chunk)
                stats["bytes_sent"] += len(chunk)
        except (ConnectionError, OSError):
            pass
        return resp


def make_app(limit_mb: float, ok_count: int) -> web.Application:
    """The hostile application, routes under ``/v1``."""
    api = HostileApi(limit_mb, ok_count)
    app = web.Application()
    app.router.add_get("/v1/responses/{response_id}", api.get_response)
    app.router.add_get("/v1/responses/{response_id}/input_items", api.get_input_items)
    app.router.add_get("/_stats", api.get_stats)
    return app


async def serve(limit_mb: float, ok_count: int, lifetime_s: float) -> None:
    """Serve on 127.0.0.1 (a free port) until killed or ``lifetime_s`` has passed."""
    runner = web.AppRunner(make_app(limit_mb, ok_count), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    print(f"http://127.0.0.1:{port}/v1", flush=True)
    try:
        await asyncio.sleep(lifetime_s)  # never outlive a test run that forgot us
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit-mb", type=float, default=64.0, help="the body limit under test, in MiB")
    parser.add_argument("--ok", type=int, default=100, help="how many resp_ok_NNN IDs to serve")
    parser.add_argument("--lifetime", type=float, default=600.0, help="exit after this many seconds")
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(args.limit_mb, args.ok, args.lifetime))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
