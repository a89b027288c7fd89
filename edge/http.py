"""HTTP plumbing for the edge: bodies with limits, JSON answers, request ids,
and streaming that stops the producer the moment the client goes away."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from core.request_id import REQUEST_ID, sane_request_id
from edge.errors import ApiError, invalid

log = logging.getLogger(__name__)
T = TypeVar("T")
REQUEST_ID_KEY = "aqueduct.request_id"


def request_id(request: Request) -> str:
    """The caller's `x-request-id` if safe, else a fresh one; stable per request."""
    rid = request.scope.get(REQUEST_ID_KEY)
    if rid is None:
        rid = sane_request_id(request.headers.get("x-request-id"))
        request.scope[REQUEST_ID_KEY] = rid
        REQUEST_ID.set(rid)  # for every log line written while serving it
        log.debug("request", extra={"method": request.method, "path": request.url.path})
    return str(rid)


def json_response(
    payload: bytes | Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def page_limit(value: str | None, maximum: int) -> int | None:
    """A list route's `limit` query parameter, 1 to `maximum`; None when absent."""
    if value is None:
        return None
    if not value.isdigit() or not 1 <= int(value) <= maximum:
        raise invalid("limit", f"'limit' must be an integer between 1 and {maximum}.")
    return int(value)


def list_response(data: list[dict[str, Any]], has_more: bool, rid: str) -> Response:
    """One page of a list route, in OpenAI's shape."""
    return json_response(
        {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": has_more,
        },
        headers={"x-request-id": rid},
    )


def error_response(error: ApiError, request: Request) -> Response:
    headers = {"x-request-id": request_id(request), **error.headers}
    return json_response(error.json(), error.status, headers)


async def read_json(request: Request, limit: int) -> object:
    """The request body parsed as JSON: 415 for other media, 413 over `limit`."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media and media != "application/json" and not media.endswith("+json"):
        raise ApiError(
            415,
            f"Content-Type must be application/json; got '{media}'.",
            code="unsupported_media_type",
        )
    too_large = ApiError(
        413, f"Request body is larger than {limit // (1024 * 1024)} MB.", code="request_too_large"
    )
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
    except ClientDisconnect:  # gone, or cut by the body timeout: nobody to answer
        raise ApiError(
            499, "Client closed the request.", type="cancelled", code="client_disconnected"
        ) from None
    try:
        return orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError as error:
        raise ApiError(
            400, f"The request body is not valid JSON: {error}.", code="invalid_json"
        ) from None


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def until_disconnect(receive: Receive, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client disconnects first.

    Cancelling the work cancels the gRPC call beneath it, which cancels the
    generation or upstream request: nobody computes for a client who left.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            # Let its cleanup (closing the gRPC call, the stream) finish first.
            await asyncio.wait((task,))
    if task.cancelled():
        raise ApiError(499, "Client closed the request.", type="cancelled", code="cancelled")
    return task.result()


class EventStream:
    """An SSE answer: `first` is already produced, `rest` is pumped as it comes.

    Each item of `rest` goes out as one socket write. When the client
    disconnects, `rest` is closed at once (its `finally` cancels the gRPC call),
    and `on_close` runs however the stream ended.
    """

    def __init__(
        self,
        first: bytes,
        rest: AsyncGenerator[bytes, None],
        headers: Mapping[str, str],
        on_close: Callable[[], None] = lambda: None,
    ) -> None:
        self.first = first
        self.rest = rest
        self.headers = [(k.encode(), v.encode()) for k, v in headers.items()]
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/event-stream; charset=utf-8"),
                (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no"),
                *self.headers,
            ],
        }
        try:
            await send(start)
            await send({"type": "http.response.body", "body": self.first, "more_body": True})
            with contextlib.suppress(ApiError):
                await until_disconnect(receive, self._pump(send))
        finally:
            await self.rest.aclose()  # its cleanup runs even if it never started
            self.on_close()

    async def _pump(self, send: Send) -> None:
        async for chunk in self.rest:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
