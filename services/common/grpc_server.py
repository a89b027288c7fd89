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

from core.channels import open_channel
from core.config import ConfigError, env_float, service_addresses
from core.tls import TlsFiles, tls_from_env
from services.common.drain import Drain, DrainWrapper
from services.common.identity import Access, IdentityWrapper
from services.common.interceptors import CallWrapper, ServerInterceptor, call_wrappers
from services.common.key_scope import KeyVerifier
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
        self,
        address: str,
        service_names: Sequence[str],
        finishing: Sequence[str] = (),
        tls: TlsFiles | None = None,
        access: Access | None = None,
    ) -> None:
        """`tls` None: AQUEDUCT_TLS_* decide (plaintext when unset). `access`: who
        may call which method, enforced only with TLS (the identity is the
        client certificate's CN)."""
        self.address = address
        self.tls = tls if tls is not None else tls_from_env()
        # Key-bearing callers are verified with auth over this process's own mTLS.
        self.verifier: KeyVerifier | None = None
        guard: list[CallWrapper] = []
        if self.tls is not None and access is not None:
            if access.keyed:
                channel = open_channel(service_addresses("auth"), self.tls)
                self.verifier = KeyVerifier(channel)
            guard = [IdentityWrapper(access, self.verifier)]
        self.service_names = list(service_names)
        self.metrics = ServiceMetrics()
        self.drain = Drain(self.service_names, finishing)
        # The drain wrapper innermost: its refusals are mapped and counted.
        self.server = grpc.aio.server(
            options=SERVER_OPTIONS,
            interceptors=[
                ServerInterceptor([*call_wrappers(self.metrics), *guard, DrainWrapper(self.drain)])
            ],
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server
        )
        self.port = 0
        self._health: dict[str, int] = {}  # the status each name was last set to
        # Run as the drain begins: end long-lived calls that are not work
        # (key-event watches, idle prepared calls), which would hold the grace.
        self.on_shutdown: list[Callable[[], None]] = []
        # Run once the server has stopped, before its channels close: send what
        # the finished calls left to send (inference's settles for metered callers).
        self.on_stopped: list[Callable[[], Awaitable[None]]] = []

    async def start(self) -> int:
        """Bind and start answering (health says NOT_SERVING); returns the port."""
        try:
            if self.tls is None:
                self.port = self.server.add_insecure_port(self.address)
            else:
                self.port = self.server.add_secure_port(self.address, self.tls.server_credentials())
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
        await self.health.enter_graceful_shutdown()  # every name NOT_SERVING, for good
        for name in list(self._health):
            self._count_health(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        for hook in self.on_shutdown:
            hook()
        await self.drain.wait(deadline)
        await self.server.stop(max(0.0, deadline - loop.time()))
        for flush in self.on_stopped:
            await flush()
        await self.metrics.close()
        if self.verifier is not None:
            await self.verifier.close()

    async def set_health(self, name: str, status: int) -> None:
        """Report `status` for health name `name`, and count it in the metrics."""
        self._count_health(name, status)
        await self.health.set(name, status)

    def _count_health(self, name: str, status: int) -> None:
        before = self._health.get(name)
        if status == before:
            return
        self._health[name] = status
        if not name:
            return  # the server as a whole: the same as its services' names
        serving = status == health_pb2.HealthCheckResponse.SERVING
        self.metrics.health_serving.labels(name).set(float(serving))
        if before is not None:
            to = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
            self.metrics.health_transitions.labels(name, to).inc()

    async def _set_health(self, status: int) -> None:
        for name in ["", *self.service_names]:
            await self.set_health(name, status)


async def run_until_signalled(
    name: str,
    host: ServiceHost,
    ready: Callable[[], Awaitable[None]],
    close: Callable[[], Awaitable[None]],
    grace: float = 5.0,
    prepare: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Prepare, start, get ready, serve until SIGTERM/SIGINT, then drain and close.

    The drain (ServiceHost.stop) takes at most `grace` seconds; calls still
    running then are cancelled, which cancels generations and upstream
    requests beneath them.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if prepare is not None:
        await prepare()
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

    async def prepare(self) -> None:
        """What must be done before the port takes calls (the database's tables)."""
        return None

    async def ready(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def start(self, metrics_at: tuple[str, int] | None = None) -> int:
        """Start and get ready without waiting for signals (tests, embedding)."""
        await self.prepare()
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
        await run_until_signalled(
            self.name, self.host, self.ready, self.close, grace, prepare=self.prepare
        )
