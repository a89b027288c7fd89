"""A service process's Prometheus metrics: its gRPC calls by method and code,
plus collectors each service adds for its own state, served over HTTP on
`AQUEDUCT_<SERVICE>_METRICS_ADDR` (off when unset; `make run` sets it).

Collectors read the service's state when scraped, so they cost nothing per
call. The HTTP endpoint runs on the service's own event loop (a few lines of
asyncio, not prometheus-client's threaded server) so that collectors read that
state from the thread that changes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)
from prometheus_client.registry import Collector

from core.config import ConfigError, env
from core.metric_cells import Counters, Histograms

log = logging.getLogger(__name__)

Behavior = Callable[[Any, "grpc.aio.ServicerContext[Any, Any]"], Awaitable[Any]]
# Unary calls are milliseconds; streams (generations, watches) run for minutes.
HANDLING_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0,
)  # fmt: skip


def metrics_address(service: str) -> tuple[str, int] | None:
    """`AQUEDUCT_<SERVICE>_METRICS_ADDR` as (host, port), or None when unset."""
    name = f"AQUEDUCT_{service.upper()}_METRICS_ADDR"
    raw = env(name, "")
    if not raw:
        return None
    host, sep, port = raw.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"{name}: {raw!r} is not host:port")
    return host, int(port)


class ServiceMetrics:
    """The registry of one service process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # Updated on every call: plain numbers (core.metric_cells), not locked ones.
        self.handled = Counters(
            "grpc_server_handled",
            "gRPC calls completed, by service, method and status code.",
            ["grpc_service", "grpc_method", "grpc_code"],
            self.registry,
        )
        self.handling = Histograms(
            "grpc_server_handling_seconds",
            "Time from a gRPC call's start to its end, by service and method.",
            ["grpc_service", "grpc_method"],
            HANDLING_BUCKETS,
            self.registry,
        )
        self.health_serving = Gauge(
            "aqueduct_health_serving",
            "1 while a name this service reports gRPC health for (each of its services, "
            "and auth's stores) is SERVING.",
            ["health_name"],
            registry=self.registry,
        )
        self.health_transitions = Counter(
            "aqueduct_health_transitions",
            "Changes of a health name's status, by the status it changed to.",
            ["health_name", "to"],
            registry=self.registry,
        )
        # Awaited before each scrape: state that needs I/O to read (database totals).
        self.before_scrape: list[Callable[[], Awaitable[None]]] = []
        self._server: asyncio.Server | None = None
        self.port = 0  # where metrics are served, once they are

    def add(self, collector: Collector) -> None:
        self.registry.register(collector)

    def measure(self, behavior: Behavior, method: str) -> Behavior:
        """`behavior` that counts its calls by final status code."""
        service, _, name = method.lstrip("/").rpartition("/")
        handling, handled = self.handling.labels(service, name), self.handled

        async def measured(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started = time.perf_counter()
            code = "OK"
            try:
                return await behavior(request, context)
            except grpc.aio.AbortError:
                ended = context.code()
                code = ended.name if isinstance(ended, grpc.StatusCode) else "UNKNOWN"
                raise
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except BaseException:
                code = "UNKNOWN"
                raise
            finally:
                handled.labels(service, name, code).inc()
                handling.observe(time.perf_counter() - started)

        return measured

    async def serve(self, host: str, port: int) -> int:
        """Answer `GET /metrics` on host:port; returns the port bound."""
        self._server = await asyncio.start_server(self._answer, host, port)
        bound = self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("metrics listening", extra={"address": f"{host}:{bound}"})
        return bound

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def _refresh(self) -> None:
        for refresh in self.before_scrape:
            try:
                await refresh()
            except Exception:  # the other metrics are still worth serving
                log.warning("a metrics refresh failed", exc_info=True)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            method, path, *_ = [*head.split(b"\r\n", 1)[0].split(b" "), b"", b""]
            if method == b"GET" and path.split(b"?")[0] == b"/metrics":
                await self._refresh()
                status, body, kind = "200 OK", generate_latest(self.registry), CONTENT_TYPE_LATEST
            else:
                status, body, kind = "404 Not Found", b"not found\n", "text/plain"
            writer.write(
                f"HTTP/1.1 {status}\r\ncontent-type: {kind}\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # a client that sends no request, or too much of one: just close
        except ConnectionError:
            pass
        finally:
            writer.close()
