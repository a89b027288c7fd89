"""One upstream replica over HTTP: its pooled client, and reading its answers.

One `httpx.AsyncClient` per replica, made once when the models file is loaded:
HTTP/1.1 keep-alive with a bounded pool, a connect timeout, no read timeout
(the caller's per-request deadline bounds everything). Closing a response that
is still streaming closes its connection, which is how an upstream learns that
nobody wants the rest.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from services.inference.models_file import UpstreamSpec

KEEPALIVE_EXPIRY_S = 30.0


@dataclass(frozen=True)
class PoolOptions:
    max_connections: int = 100
    connect_timeout_s: float = 10.0


class Upstream:
    def __init__(self, spec: UpstreamSpec, model_name: str, options: PoolOptions) -> None:
        self.url = spec.url
        self.model = spec.model or model_name  # the name the upstream expects
        headers = {"authorization": f"Bearer {spec.api_key}"} if spec.api_key else {}
        self.client = httpx.AsyncClient(
            base_url=spec.url + "/",
            headers=headers,
            timeout=httpx.Timeout(None, connect=options.connect_timeout_s),
            limits=httpx.Limits(
                max_connections=options.max_connections,
                max_keepalive_connections=options.max_connections,
                keepalive_expiry=KEEPALIVE_EXPIRY_S,
            ),
            http1=True,
            http2=False,
            follow_redirects=False,
        )

    def __repr__(self) -> str:  # never the key
        return f"Upstream({self.url})"

    async def close(self) -> None:
        await self.client.aclose()


class BodyPump:
    """Reads a streamed body on its own task, so that `take()` returns everything
    that arrived since the last call: all the chunks of one socket read (and of
    any reads the consumer was too busy to see) become one batch.

    `deadline` (loop time) bounds the whole body; `take()` raises TimeoutError
    after it. `close()` stops reading and closes the connection if unfinished.
    """

    def __init__(self, response: httpx.Response, deadline: float) -> None:
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
    response: httpx.Response, deadline: float, limit: int, too_large: Callable[[], Exception]
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
