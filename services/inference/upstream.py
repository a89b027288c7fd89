"""One upstream replica over HTTP: its pooled client, and reading its answers.

One aiohttp session per replica, made on first use (inside the event loop):
HTTP/1.1 keep-alive with a bounded pool, a connect timeout, no read timeout
(the caller's per-request deadline bounds everything). aiohttp rather than
httpx because this is the hot path: it parses HTTP in C and costs a fraction
of the CPU per request. Closing a response that is still streaming closes its
connection, which is how an upstream learns that nobody wants the rest.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiohttp

from services.inference.models_file import UpstreamSpec

KEEPALIVE_EXPIRY_S = 30.0
# Failures of the transport (as opposed to an answer the upstream gave).
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (aiohttp.ClientError, OSError)
# Failures before any answer began: safe to retry on another replica. A
# disconnect here is a keep-alive connection the upstream had already closed.
RETRY_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientConnectionError,
    ConnectionError,
)
# An answer that could not be read in full (for error bodies, read best-effort).
UNREADABLE: tuple[type[BaseException], ...] = (TimeoutError, *TRANSPORT_ERRORS)
ConnectTimeout = aiohttp.ConnectionTimeoutError


@dataclass(frozen=True)
class PoolOptions:
    max_connections: int = 100
    connect_timeout_s: float = 10.0


class UpstreamResponse:
    """The part of an HTTP answer the backend needs, whatever the client library."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status_code = response.status
        self.headers = response.headers

    def aiter_bytes(self) -> AsyncIterator[bytes]:
        """Whatever each socket read delivered, one item per read."""
        return self._response.content.iter_any()

    async def aclose(self) -> None:
        """Back to the pool if fully read, else close the connection."""
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


class Upstream:
    def __init__(self, spec: UpstreamSpec, model_name: str, options: PoolOptions) -> None:
        self.url = spec.url
        self.model = spec.model or model_name  # the name the upstream expects
        self._headers = {"authorization": f"Bearer {spec.api_key}"} if spec.api_key else {}
        self._options = options
        self._session: aiohttp.ClientSession | None = None
        self.closed = False

    def __repr__(self) -> str:  # never the key
        return f"Upstream({self.url})"

    def _client(self) -> aiohttp.ClientSession:
        if self.closed:
            raise aiohttp.ClientConnectionError(f"{self!r} is closed")
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                connector=aiohttp.TCPConnector(
                    limit=self._options.max_connections,
                    limit_per_host=0,
                    keepalive_timeout=KEEPALIVE_EXPIRY_S,
                ),
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=self._options.connect_timeout_s
                ),
                auto_decompress=True,
            )
        return self._session

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> UpstreamResponse:
        """Send; returns once the status line and headers have arrived."""
        response = await self._client().post(
            f"{self.url}/{path}", data=body, headers=headers, allow_redirects=False
        )
        return UpstreamResponse(response)

    async def close(self) -> None:
        self.closed = True
        if self._session is not None:
            await self._session.close()


class BodyPump:
    """Reads a streamed body on its own task, so that `take()` returns everything
    that arrived since the last call: all the chunks of one socket read (and of
    any reads the consumer was too busy to see) become one batch.

    `deadline` (loop time) bounds the whole body; `take()` raises TimeoutError
    after it. `close()` stops reading and closes the connection if unfinished.
    """

    def __init__(self, response: UpstreamResponse, deadline: float) -> None:
        self._response = response
        self._chunks: list[bytes] = []
        self._ended = False
        self._expired = False
        self._error: Exception | None = None
        loop = asyncio.get_running_loop()
        self._waiter: asyncio.Future[None] | None = None
        self._timer = loop.call_at(deadline, self._expire)
        self._task = loop.create_task(self._run())

    async def _run(self) -> None:
        try:
            async for chunk in self._response.aiter_bytes():
                self._chunks.append(chunk)
                self._wake()
        except Exception as error:  # transport failures surface in take()
            self._error = error
        finally:
            self._ended = True
            self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _expire(self) -> None:
        self._expired = True
        self._wake()

    async def take(self) -> list[bytes] | None:
        """The chunks that arrived since last time; None once the body is over."""
        while not self._chunks:
            if self._expired:
                raise TimeoutError
            if self._ended:
                if self._error is not None:
                    raise self._error
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        chunks, self._chunks = self._chunks, []
        return chunks

    async def read_all(self, limit: int, too_large: Callable[[], Exception]) -> bytes:
        parts, size = [], 0
        while (chunks := await self.take()) is not None:
            for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise too_large()
                parts.append(chunk)
        return b"".join(parts)

    async def close(self) -> None:
        self._timer.cancel()
        if not self._task.done():
            self._task.cancel()  # httpcore closes the half-read connection
            await asyncio.wait([self._task])
        await self._response.aclose()


async def read_limited(
    response: UpstreamResponse, deadline: float, limit: int, too_large: Callable[[], Exception]
) -> bytes:
    """A whole (small) body within the deadline; TimeoutError after it."""
    parts, size = [], 0
    async with asyncio.timeout_at(deadline):
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > limit:
                raise too_large()
            parts.append(chunk)
    return b"".join(parts)
