"""Lifecycle shared by every gRPC service: health, reflection, interceptors,
graceful stop.

Health reports NOT_SERVING until the service says it is ready (model loaded,
database reachable), and goes NOT_SERVING again as its drain begins
(ServiceHost.stop), so that balancers and edges send new work elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from core.config import ConfigError, env_float
from services.common.drain import Drain, DrainInterceptor
from services.common.interceptors import interceptors
from services.common.metrics import ServiceMetrics, metrics_address

log = logging.getLogger(__name__)

SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", 80 * 1024 * 1024),
    ("grpc.max_send_message_length", 80 * 1024 * 1024),
    ("grpc.keepalive_permit_without_calls", 1),
    # gRPC binds with SO_REUSEPORT by default: a second server on a taken port
    # would silently share its traffic instead of failing to start.
    ("grpc.so_reuseport", 0),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
]


class ServiceHost:
    """One grpc.aio server with the standard health and reflection services.

    `finishing` names the methods that complete work already admitted (auth's
    SettleQuotas): they are still taken while the service drains.
    """

    def __init__(
        self, address: str, service_names: Sequence[str], finishing: Sequence[str] = ()
    ) -> None:
        self.address = address
        self.service_names = list(service_names)
        self.metrics = ServiceMetrics()
        self.drain = Drain(self.service_names, finishing)
        # The drain's interceptor innermost: its refusals are mapped and counted.
        self.server = grpc.aio.server(
            options=SERVER_OPTIONS,
            interceptors=[*interceptors(self.metrics), DrainInterceptor(self.drain)],
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server
        )
        self.port = 0
        # Run as the drain begins: end long-lived calls that are not work
        # (key-event watches, idle prepared calls), which would hold the grace.
        self.on_shutdown: list[Callable[[], None]] = []

    async def start(self) -> int:
        """Bind and start answering (health says NOT_SERVING); returns the port."""
        try:
            self.port = self.server.add_insecure_port(self.address)
        except RuntimeError:  # grpcio's "Failed to bind"
            self.port = 0
        if self.port == 0:
            raise ConfigError(f"cannot listen on {self.address}: the address is taken or not local")
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()
        return self.port

    async def mark_serving(self) -> None:
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)

    async def serve_metrics(self, address: tuple[str, int] | None) -> None:
        if address is not None:
            await self.metrics.serve(*address)

    async def stop(self, grace: float) -> None:
        """Drain, then stop; `grace` bounds the whole of it. In this order:

        1. New work is refused (UNAVAILABLE, reason SHUTTING_DOWN: the caller may
           send it again, elsewhere or later) and health says NOT_SERVING, so
           balancers and edges stop sending it.
        2. Long-lived calls that are not work end (the on_shutdown hooks), so
           that what follows waits only for real work.
        3. Calls still running finish, while finishing calls (settles for the
           work admitted before) are still taken: until nothing runs and no
           finishing call came for a moment (services/common/drain.py).
        4. The server stops: from here it refuses every call, and cancels what
           still runs when the grace is over.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        self.drain.begin()
        await self.health.enter_graceful_shutdown()
        for hook in self.on_shutdown:
            hook()
        await self.drain.wait(deadline)
        await self.server.stop(max(0.0, deadline - loop.time()))
        await self.metrics.close()

    async def _set_health(self, status: int) -> None:
        for name in ["", *self.service_names]:
            await self.health.set(name, status)


async def run_until_signalled(
    name: str,
    host: ServiceHost,
    ready: Callable[[], Awaitable[None]],
    close: Callable[[], Awaitable[None]],
    grace: float = 5.0,
) -> None:
    """Start, get ready, serve until SIGTERM/SIGINT, then drain and close.

    The drain (ServiceHost.stop) takes at most `grace` seconds; calls still
    running then are cancelled, which cancels generations and upstream
    requests beneath them.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    port = await host.start()
    log.info("listening", extra={"address": host.address, "port": port})
    try:
        await host.serve_metrics(metrics_address(name))
        await ready()
        await host.mark_serving()
        log.info("serving", extra={"service": name})
        await stop.wait()
        log.info("shutting down", extra={"grace_s": grace})
    finally:
        await host.stop(grace)
        await close()
    log.info("stopped")


class GrpcService:
    """Base for a service process: subclasses set `name` and `host`, and may
    override `ready` (load, connect) and `close` (release)."""

    name: str
    host: ServiceHost

    async def ready(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def start(self, metrics_at: tuple[str, int] | None = None) -> int:
        """Start and get ready without waiting for signals (tests, embedding)."""
        port = await self.host.start()
        await self.host.serve_metrics(metrics_at)
        await self.ready()
        await self.host.mark_serving()
        return port

    async def stop(self, grace: float = 1.0) -> None:
        await self.host.stop(grace)
        await self.close()

    async def run(self) -> None:
        grace = env_float("AQUEDUCT_SHUTDOWN_GRACE_S", 5.0)
        await run_until_signalled(self.name, self.host, self.ready, self.close, grace)
