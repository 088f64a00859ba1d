"""A TCP proxy on loopback that a test can cut: the database server gone or out of reach.

The process under test connects to the proxy instead of the server. :meth:`TcpProxy.refuse`
closes every connection and stops listening (a stopped server: connections reset, new
ones refused); :meth:`TcpProxy.blackhole` keeps every socket open but drops what passes
(a network partition: connects hang, queries never answer); :meth:`TcpProxy.restore`
forwards again on the same port. It runs its own event loop on a thread, so the tests
that drive subprocesses can use it from plain code.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to ``target_host``:``target_port`` (see the module docstring)."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.mode = "forward"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.Task[None]] = set()
        self._sockets: set[asyncio.StreamWriter] = set()

    def start(self) -> None:
        """Listen on a free port (kept for :meth:`restore`)."""
        self._thread.start()
        self._call(self._listen())

    def refuse(self) -> None:
        """As if the server stopped: every connection reset, new ones refused."""
        self._call(self._cut("refuse"))

    def blackhole(self) -> None:
        """As if the network dropped every packet: sockets stay open, nothing gets through."""
        self._call(self._cut("blackhole"))

    def restore(self) -> None:
        """Forward again (connections cut meanwhile stay cut)."""
        self._call(self._restore())

    def close(self) -> None:
        """Stop the proxy and its thread."""
        with contextlib.suppress(Exception):
            self._call(self._cut("refuse"))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def _call(self, coro: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(10)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _cut(self, mode: str) -> None:
        self.mode = mode
        if mode == "refuse":
            if self._server is not None:
                self._server.close()
                self._server = None
            self._abort_all()

    async def _restore(self) -> None:
        self._abort_all()  # a black-holed connection lost bytes: it cannot go on
        self.mode = "forward"
        if self._server is None:
            await self._listen()

    def _abort_all(self) -> None:
        for writer in list(self._sockets):
            with contextlib.suppress(Exception):
                writer.transport.abort()
        self._sockets.clear()
        for task in list(self._links):
            task.cancel()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._sockets.add(writer)
        if self.mode != "forward":
            await self._swallow(reader)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._sockets.add(up_writer)
        links = [
            asyncio.ensure_future(self._pipe(reader, up_writer)),
            asyncio.ensure_future(self._pipe(up_reader, writer)),
        ]
        self._links.update(links)
        await asyncio.gather(*links, return_exceptions=True)
        self._links.difference_update(links)
        for w in (writer, up_writer):
            self._sockets.discard(w)
            with contextlib.suppress(Exception):
                w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            if self.mode == "blackhole":
                continue  # dropped: neither side hears of it
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(Exception):
            writer.write_eof()

    async def _swallow(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(Exception):
            while await reader.read(65536):
                pass


@contextmanager
def tcp_proxy(host: str, port: int) -> Iterator[TcpProxy]:
    """A started :class:`TcpProxy` to ``host``:``port``, closed afterwards."""
    proxy = TcpProxy(host, port)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.close()
