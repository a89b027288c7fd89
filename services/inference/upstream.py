"""One upstream replica over HTTP: its connection pool, and the requests it is sent.

One pool per replica (services/inference/http1.py), made with the replica:
HTTP/1.1 keep-alive, at most `max_connections` open, a connect timeout and no
read timeout (the caller's per-request deadline bounds everything).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from opentelemetry.trace import SpanKind

from core import tracing
from services.inference.http1 import ConnectTimeout, MalformedResponse, Pool, PoolBusy, Response
from services.inference.models_file import UpstreamSpec

__all__ = [
    "RETRY_ERRORS",
    "TRANSPORT_ERRORS",
    "UNREADABLE",
    "ConnectTimeout",
    "MalformedResponse",
    "PoolBusy",
    "PoolOptions",
    "Response",
    "Upstream",
]

# Failures of the transport (as opposed to an answer the upstream gave).
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (OSError, MalformedResponse)
# Failures before any answer began: safe to retry on another replica. A
# connect timeout is one; so is a connection that closed before answering.
RETRY_ERRORS: tuple[type[BaseException], ...] = (ConnectionError,)
# An answer that could not be read in full (for error bodies, read best-effort).
UNREADABLE: tuple[type[BaseException], ...] = (TimeoutError, *TRANSPORT_ERRORS)


def public_url(url: str) -> str:
    """`url` without credentials, query or fragment: scheme, host, port, path."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"


@dataclass(frozen=True)
class PoolOptions:
    max_connections: int = 100
    connect_timeout_s: float = 10.0
    wait_s: float = 5.0  # for a free connection when all are in use


class Upstream:
    def __init__(self, spec: UpstreamSpec, model_name: str, options: PoolOptions) -> None:
        self.url = spec.url
        self.label = public_url(spec.url)  # for metrics and traces
        self.model = spec.model or model_name  # the name the upstream expects
        self._pool = Pool(
            spec.url, options.max_connections, options.connect_timeout_s, options.wait_s
        )
        origin = self._pool.origin
        auth = f"authorization: Bearer {spec.api_key}\r\n" if spec.api_key else ""
        self._path = origin.path
        self._fixed_headers = (
            f"host: {origin.host_header}\r\n{auth}"
            "content-type: application/json\r\nuser-agent: aqueduct\r\n"
        )

    @property
    def closed(self) -> bool:
        return self._pool.closed

    def __repr__(self) -> str:  # never the key
        return f"Upstream({self.url})"

    async def post(
        self,
        path: str,
        body: bytes,
        headers: Mapping[str, str],
        deadline: float,
    ) -> Response:
        """Send; returns once the status line and headers have arrived.

        `deadline` (loop time) bounds reading the body: after it, `take()`
        raises TimeoutError.
        """
        if tracing.STATE.enabled:
            return await self._traced_post(path, body, headers, deadline)
        return await self._post(path, body, headers, deadline)

    async def _traced_post(
        self, path: str, body: bytes, headers: Mapping[str, str], deadline: float
    ) -> Response:
        """One attempt as a client span, its context sent along in `traceparent`."""
        attributes = {"http.request.method": "POST", "url.full": f"{self.label}/{path}"}
        with tracing.span("POST", SpanKind.CLIENT, **attributes) as attempt:
            sent = {**headers, tracing.TRACEPARENT: tracing.traceparent()}
            response = await self._post(path, body, sent, deadline)
            attempt.set_attribute("http.response.status_code", response.status_code)
            return response

    async def _post(
        self, path: str, body: bytes, headers: Mapping[str, str], deadline: float
    ) -> Response:
        extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        head = (
            f"POST {self._path}/{path} HTTP/1.1\r\n{self._fixed_headers}{extra}"
            f"content-length: {len(body)}\r\n\r\n"
        )
        return await self._pool.request(head.encode("latin-1") + body, deadline)

    async def close(self) -> None:
        self._pool.close()
