"""HTTP access to the Responses API: one aiohttp session, bounded connections, bounded bodies.

The provider is untrusted input. Bodies are read as a stream and decompressed here, not
by aiohttp, so the limit counts decompressed bytes and a compression bomb stops at the
limit instead of filling memory. Redirects are never followed.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType

import aiohttp

from archiver import __version__
from archiver.budget import READ_PIECE, Reservation
from archiver.ids import response_path

ERROR_BODY_LIMIT = 1 << 20
"""At most this much of a non-200 body is read (the rest is dropped): an error envelope is small."""

_HEAD_LIMIT = 1 << 20  # input kept until the first output, to retry "deflate" as raw

MAX_GZIP_MEMBERS = 64
"""A gzip body of more members than this is refused (each member restarts the inflater)."""


class BodyTooLarge(Exception):
    """The body passed ``--max-body-mb`` (counted after decompression); reading stopped there."""

    def __init__(self, limit: int, read: int) -> None:
        super().__init__(f"body larger than --max-body-mb ({limit / (1 << 20):g} MiB after decompression)")
        self.limit = limit
        self.read = read


class UndecodableBody(Exception):
    """The body's Content-Encoding is not one archiver asked for, or its compressed data is corrupt."""


@dataclass(frozen=True, slots=True)
class Exchange:
    """One HTTP answer. ``truncated``: only the first :data:`ERROR_BODY_LIMIT` bytes of an error body."""

    status_code: int
    headers: dict[str, str]
    body: bytes
    truncated: bool = False


class ResponsesClient:
    """Fetches ``GET {base_url}/responses/{id}`` with at most ``concurrency`` connections.

    Timeouts use ``sock_connect``/``sock_read``/``total`` rather than ``connect``, which
    would also count the wait for a free pooled connection.

    Args:
        base_url: the API base URL (checked by :class:`~archiver.settings.Settings`).
        api_key: sent as a bearer token when set.
        concurrency: connections at most.
        request_timeout: seconds one request may take in all.
        connect_timeout: seconds to connect.
        max_body_bytes: no body is read past this many decompressed bytes.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        concurrency: int,
        request_timeout: float,
        connect_timeout: float = 10.0,
        max_body_bytes: int = 64 << 20,
    ) -> None:
        self.base_url = base_url.rstrip("/") + "/"
        self.max_body_bytes = max_body_bytes
        self._headers = {
            "User-Agent": f"archiver/{__version__}",
            "Accept": "application/json",
            # Only what _Inflater decodes; anything else the server sends is refused.
            "Accept-Encoding": "gzip, deflate",
        }
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._timeout = aiohttp.ClientTimeout(
            total=request_timeout, sock_connect=connect_timeout, sock_read=request_timeout
        )
        self._concurrency = concurrency
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ResponsesClient:
        connector = aiohttp.TCPConnector(limit=self._concurrency, limit_per_host=self._concurrency)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            headers=self._headers,
            raise_for_status=False,
            auto_decompress=False,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the session and its connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def url_for(self, response_id: str) -> str:
        """The URL of one response; the ID is always URL-quoted."""
        return self.base_url + response_path(response_id)

    async def fetch_input_items_page(
        self,
        response_id: str,
        after: str | None,
        limit: int = 100,
        *,
        max_bytes: int | None = None,
        reservation: Reservation | None = None,
        include: Sequence[str] = (),
    ) -> Exchange:
        """GET one page of ``/responses/{id}/input_items``, oldest first.

        ``include`` values go out as repeated ``include[]`` query parameters.

        Raises:
            BodyTooLarge: the page passed ``max_bytes`` (default: the client's limit).
        """
        params = [("order", "asc"), ("limit", str(limit))]
        if after is not None:
            params.append(("after", after))
        params.extend(("include[]", value) for value in include)
        url = self.url_for(response_id) + "/input_items"
        return await self._get(url, params, max_bytes, reservation)

    async def fetch(
        self,
        response_id: str,
        *,
        max_bytes: int | None = None,
        reservation: Reservation | None = None,
        include: Sequence[str] = (),
    ) -> Exchange:
        """GET one response and read its body, at most ``max_bytes`` of it after decompression.

        ``include`` values (fields returned only when asked for) go out as repeated
        ``include[]`` query parameters, e.g. ``?include[]=reasoning.encrypted_content``.

        Raises:
            BodyTooLarge: a 200 body passed the limit.
            UndecodableBody: an encoding not asked for, or corrupt compressed data.
            aiohttp.ClientError, asyncio.TimeoutError, OSError: transport faults, for the
                policy to classify.
        """
        params = [("include[]", value) for value in include]
        return await self._get(self.url_for(response_id), params or None, max_bytes, reservation)

    async def _get(
        self,
        url: str,
        params: list[tuple[str, str]] | None,
        max_bytes: int | None,
        reservation: Reservation | None,
    ) -> Exchange:
        assert self._session is not None, "use ResponsesClient as an async context manager"
        limit = self.max_body_bytes if max_bytes is None else max_bytes
        async with self._session.get(url, params=params, allow_redirects=False) as resp:
            headers = dict(resp.headers)
            if resp.status != 200:
                body, truncated = await read_body(
                    resp, min(limit, ERROR_BODY_LIMIT), reservation, truncate=True
                )
                return Exchange(resp.status, headers, body, truncated)
            body, _ = await read_body(resp, limit, reservation)
            return Exchange(resp.status, headers, body)


async def read_body(
    resp: aiohttp.ClientResponse, limit: int, reservation: Reservation | None, *, truncate: bool = False
) -> tuple[bytes, bool]:
    """Read a body as a stream, decompressing it here, at most ``limit`` bytes after decompression.

    Args:
        resp: a response from a session made with ``auto_decompress=False``.
        limit: the most decompressed bytes kept.
        reservation: counts the bytes against the byte budget as they arrive (may wait).
        truncate: past the limit, stop and return what was read instead of raising.

    Returns:
        (body, whether it was cut at the limit).

    Raises:
        BodyTooLarge: past the limit, unless ``truncate``.
        UndecodableBody: see :func:`inflater_for`.
    """
    parts: list[bytes] = []
    total = 0
    async for piece in _decoded_pieces(resp):
        cut = total + len(piece) > limit
        if cut:
            if not truncate:
                raise BodyTooLarge(limit, total + len(piece))
            piece = piece[: limit - total]
        if reservation is not None:
            await reservation.take(len(piece))
        total += len(piece)
        parts.append(piece)
        if cut:
            return b"".join(parts), True
    return b"".join(parts), False


async def _decoded_pieces(resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """The body after decompression, in pieces of at most READ_PIECE bytes."""
    inflater = inflater_for(resp.headers.get("Content-Encoding", ""))
    async for wire in resp.content.iter_chunked(READ_PIECE):
        for piece in inflater.feed(wire):
            yield piece
    for piece in inflater.finish():
        yield piece


class _Identity:
    def feed(self, data: bytes) -> Iterator[bytes]:
        if data:
            yield data

    def finish(self) -> Iterator[bytes]:
        return iter(())


class _Inflater:
    """gzip or deflate, decoded in pieces of at most READ_PIECE bytes (never a whole bomb at once)."""

    def __init__(self, encoding: str) -> None:
        self._gzip = encoding in ("gzip", "x-gzip")
        self._wbits = 31 if self._gzip else 15
        self._obj = zlib.decompressobj(self._wbits)
        self._started = False  # some output came: the format is settled
        self._head: bytes | None = b""  # input before the first output, for the raw-deflate retry
        self._members = 1

    def feed(self, data: bytes) -> Iterator[bytes]:
        if not self._started and self._wbits == 15 and self._head is not None:
            # Kept whole or not at all: a retry as raw deflate must start at the first byte.
            self._head = self._head + data if len(self._head) + len(data) <= _HEAD_LIMIT else None
        buf = data
        while buf:
            if self._obj.eof:
                if not self._gzip or not buf.strip(b"\0"):
                    return  # trailing bytes after a deflate stream (or gzip padding): ignored
                self._members += 1
                if self._members > MAX_GZIP_MEMBERS:
                    raise UndecodableBody(f"gzip body of more than {MAX_GZIP_MEMBERS} members")
                self._obj = zlib.decompressobj(self._wbits)
            try:
                out = self._obj.decompress(buf, READ_PIECE)
            except zlib.error as exc:
                if not self._started and self._wbits == 15 and self._head is not None:
                    # "deflate" is meant to be zlib-wrapped, but servers also send it raw:
                    # start again from the first byte as raw deflate.
                    self._wbits = -15
                    self._obj = zlib.decompressobj(self._wbits)
                    buf, self._head = self._head, None
                    continue
                raise UndecodableBody(f"corrupt compressed body: {exc}") from None
            buf = self._obj.unused_data if self._obj.eof else self._obj.unconsumed_tail
            if out:
                self._started = True
                yield out
            while not self._obj.eof and not buf:
                # Output still pending inside the inflater (the last call stopped at READ_PIECE).
                more = self._obj.decompress(b"", READ_PIECE)
                if not more:
                    break
                yield more

    def finish(self) -> Iterator[bytes]:
        if not self._obj.eof:
            while True:
                more = self._obj.decompress(self._obj.unconsumed_tail, READ_PIECE)
                if not more:
                    break
                yield more
            if not self._obj.eof and self._started:
                raise UndecodableBody("truncated compressed body")


def inflater_for(content_encoding: str) -> _Identity | _Inflater:
    """The decoder for a ``Content-Encoding`` header value.

    Raises:
        UndecodableBody: an encoding archiver did not ask for (it sends
            ``Accept-Encoding: gzip, deflate``), or several stacked encodings.
    """
    encoding = content_encoding.strip().lower()
    if encoding in ("", "identity"):
        return _Identity()
    if encoding in ("gzip", "x-gzip", "deflate"):
        return _Inflater(encoding)
    raise UndecodableBody(f"Content-Encoding {encoding[:40]!r} was not asked for")
