"""uvicorn's httptools protocol with the limits a public edge needs.

uvicorn reads request heads of any size, waits forever for heads and bodies that
trickle or stall, and answers its parser's errors in plain text. This protocol
refuses, before any key check and in OpenAI's error shape:
- a head (request line and headers) over `max_header_bytes`, or with more than
  `max_headers` headers: 431;
- a head not complete `header_timeout_s` after it began (or after the
  connection opened): 408; a connection that sent nothing is just closed;
- a body with no byte for `body_timeout_s` while the app waits for it: 408;
- what the HTTP parser rejects (NUL in a header, obs-fold, Content-Length with
  Transfer-Encoding, a bad chunk size…): 400.
Idle keep-alive connections are closed by uvicorn's own `timeout_keep_alive`.

A connection closed while the client is still sending its request (an early
answer such as 413, or the refusals above) is closed the way browsers and
proxies expect: our side is shut after the answer and what the client still
sends is read and dropped for a few seconds, so it reads the answer instead of
a connection reset.
"""

from __future__ import annotations

import asyncio
import http
import uuid
from typing import Any, ClassVar, cast

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from edge.config import HttpLimits
from edge.errors import ApiError

IDLE, HEAD, BODY = "idle", "head", "body"  # where the parser is in the current request
LINGER_S = 5.0


def uvicorn_config(app: Any, limits: HttpLimits, **options: Any) -> uvicorn.Config:
    """uvicorn serving `app` with this protocol and `limits`."""
    return uvicorn.Config(
        app,
        http=GuardedHttpProtocol.with_limits(limits),
        ws="none",  # no WebSocket routes: an Upgrade is served as a plain request
        timeout_keep_alive=limits.idle_timeout_s,
        log_config=None,
        access_log=False,
        **options,
    )


class _TooManyHeaders(Exception):
    """Raised from the parser's header callback to stop parsing at once."""


def error_answer(status: int, message: str, code: str) -> bytes:
    """A whole HTTP/1.1 answer in OpenAI's error shape that closes the connection."""
    body = ApiError(status, message, code=code).json()
    head = (
        f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        f"x-request-id: {uuid.uuid4().hex}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode() + body


class _Transport:
    """The connection's transport as uvicorn's request cycle sees it: only
    `close` differs, so that an answer given before the request was fully
    received lingers (GuardedHttpProtocol.close_connection)."""

    def __init__(self, transport: asyncio.Transport, protocol: GuardedHttpProtocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self.write = transport.write
        self.is_closing = transport.is_closing

    def close(self) -> None:
        self._protocol.close_connection()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class GuardedHttpProtocol(HttpToolsProtocol):
    limits: ClassVar[HttpLimits] = HttpLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._raw: asyncio.Transport | None = None
        self._phase = IDLE
        self._head_bytes = 0
        self._head_deadline: float | None = None
        self._last_read = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._lingering = False
        self._closed = False

    @classmethod
    def with_limits(cls, limits: HttpLimits) -> type[GuardedHttpProtocol]:
        """This protocol class with `limits` (uvicorn's `http=` takes a class)."""
        return type(cls.__name__, (cls,), {"limits": limits})

    # --- connection ---------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._raw = transport
        super().connection_made(cast(asyncio.Transport, _Transport(transport, self)))
        self._head_deadline = self.loop.time() + self.limits.header_timeout_s
        self._arm(self.limits.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # read and dropped: the answer is on its way
        self._unset_keepalive_if_required()
        self._last_read = self.loop.time()
        while data:
            if self._phase == BODY:
                chunk, data = data, b""
            else:  # feed no more of a head than may still come
                room = self.limits.max_header_bytes - self._head_bytes
                chunk, data = data[:room], data[room:]
                self._head_bytes += len(chunk)
            try:
                self.parser.feed_data(chunk)
            except httptools.HttpParserUpgrade:
                pass  # no upgrades here (ws="none"): served as a plain request
            except httptools.HttpParserError as error:
                if isinstance(error.__context__, _TooManyHeaders):
                    self.refuse(
                        431,
                        f"The request has more than {self.limits.max_headers} headers.",
                        "too_many_headers",
                    )
                else:
                    self.refuse(400, f"Invalid HTTP request: {error}.", "invalid_http_request")
                return
            if self._phase == HEAD and self._head_bytes >= self.limits.max_header_bytes:
                kib = self.limits.max_header_bytes // 1024
                self.refuse(
                    431,
                    f"The request line and headers are larger than {kib} KiB.",
                    "request_headers_too_large",
                )
                return
        self._watch()

    # --- parser callbacks ---------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._phase = HEAD
        if self._head_deadline is None:
            self._head_deadline = self.loop.time() + self.limits.header_timeout_s

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        if len(self.headers) > self.limits.max_headers:
            raise _TooManyHeaders

    def on_headers_complete(self) -> None:
        self._phase = BODY
        self._head_bytes = 0
        self._head_deadline = None
        self._disarm()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._phase = IDLE
        self._disarm()

    # --- timeouts -----------------------------------------------------------

    def _arm(self, delay: float) -> None:
        self._timer = self.loop.call_later(max(delay, 0.0), self._on_timer)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _watch(self) -> None:
        """After a read: time the part of the request still to come, if any."""
        if self._timer is not None:
            return
        if self._phase == HEAD and self._head_deadline is not None:
            self._arm(self._head_deadline - self.loop.time())
        elif self._phase == BODY:
            self._arm(self.limits.body_timeout_s)
        elif (
            self.cycle is not None
            and self.cycle.response_complete
            and self.timeout_keep_alive_task is None
        ):  # bytes between requests (stray CRLFs) must not hold the connection
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    def _on_timer(self) -> None:
        self._timer = None
        if self._lingering or self._closed:
            self._close_now()
            return
        now = self.loop.time()
        if self._phase == BODY:
            # Not the client's fault while the app has not read what came, or
            # has not yet asked for the body (Expect: 100-continue).
            if self.flow.read_paused or self.cycle.waiting_for_100_continue:
                self._arm(self.limits.body_timeout_s)
                return
            quiet = now - self._last_read
            if quiet < self.limits.body_timeout_s:
                self._arm(self.limits.body_timeout_s - quiet)
                return
            timeout = self.limits.body_timeout_s
            self.refuse(
                408, f"No part of the request body arrived for {timeout:g} s.", "request_timeout"
            )
        elif self._phase == HEAD or self.cycle is None:
            if self._head_deadline is not None and self._head_deadline > now:
                self._arm(self._head_deadline - now)
            elif self._phase == HEAD:
                timeout = self.limits.header_timeout_s
                self.refuse(
                    408,
                    f"The request headers did not arrive within {timeout:g} s.",
                    "request_timeout",
                )
            else:
                self._close_now()  # connected, sent nothing

    # --- answers and closing ------------------------------------------------

    def refuse(self, status: int, message: str, code: str) -> None:
        """Answer in OpenAI's shape and close, unless an answer is already under
        way on this connection (then only close)."""
        cycle = self.cycle
        if self._phase == BODY:  # this request's cycle: its app is told the client left
            answer = not cycle.response_started and not self.pipeline
            if not cycle.response_complete:
                cycle.disconnected = True
                cycle.message_event.set()
        else:  # an earlier request's cycle, if any
            answer = cycle is None or cycle.response_complete
        if answer and self._raw is not None and not self._raw.is_closing():
            self._raw.write(error_answer(status, message, code))
        if status == 408:
            self._close_now()  # a stalled client: nothing to wait for
        else:
            self.close_connection()

    def close_connection(self) -> None:
        """Close; if the client is still sending its request, linger: shut our
        side, drop what still comes for up to LINGER_S, then close."""
        raw = self._raw
        if raw is None or raw.is_closing():
            return
        if self._phase == IDLE or self._lingering or self._closed or not raw.can_write_eof():
            self._close_now()
            return
        self._lingering = True
        self._disarm()
        raw.write_eof()
        self.flow.resume_reading()
        self._arm(LINGER_S)

    def _close_now(self) -> None:
        self._disarm()
        if self._raw is not None and not self._raw.is_closing():
            self._raw.close()
