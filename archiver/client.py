"""HTTP access to the Responses API: one aiohttp session, bounded connections, no secrets in errors."""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType

import aiohttp

from archiver import __version__
from archiver.ids import response_path


@dataclass(frozen=True, slots=True)
class Exchange:
    """One HTTP answer, read whole."""

    status_code: int
    headers: dict[str, str]
    body: bytes


class ResponsesClient:
    """Fetches ``GET {base_url}/responses/{id}`` with at most ``concurrency`` connections.

    Timeouts use ``sock_connect``/``sock_read``/``total`` rather than ``connect``, which
    would also count the wait for a free pooled connection.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        concurrency: int,
        request_timeout: float,
        connect_timeout: float = 10.0,
    ) -> None:
        self.base_url = base_url.rstrip("/") + "/"
        self._headers = {"User-Agent": f"archiver/{__version__}", "Accept": "application/json"}
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

    async def fetch_input_items_page(self, response_id: str, after: str | None, limit: int = 100) -> Exchange:
        """GET one page of ``/responses/{id}/input_items``, oldest first."""
        assert self._session is not None, "use ResponsesClient as an async context manager"
        params = {"order": "asc", "limit": str(limit)}
        if after is not None:
            params["after"] = after
        url = self.url_for(response_id) + "/input_items"
        async with self._session.get(url, params=params, allow_redirects=False) as resp:
            return Exchange(resp.status, dict(resp.headers), await resp.read())

    async def fetch(self, response_id: str) -> Exchange:
        """GET one response and read its whole body.

        Raises:
            aiohttp.ClientError, asyncio.TimeoutError, OSError: transport faults, for the
            policy to classify.
        """
        assert self._session is not None, "use ResponsesClient as an async context manager"
        async with self._session.get(self.url_for(response_id), allow_redirects=False) as resp:
            body = await resp.read()
            return Exchange(resp.status, dict(resp.headers), body)
