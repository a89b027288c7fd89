"""Build and run the auth service."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from aqueduct.auth.v1 import auth_pb2, auth_pb2_grpc
from grpc_health.v1 import health_pb2

from core.errors import ServiceError
from services.auth.authority import KeyAuthority, bootstrap_admin
from services.auth.config import Settings
from services.auth.counters import MemoryCounters
from services.auth.counters_redis import RedisCounters
from services.auth.dependencies import Dependency, redis_dependency
from services.auth.events import EventHub
from services.auth.key_admin import KeyAdmin
from services.auth.ledger import UsageLedger
from services.auth.quotas import Counters, Quotas
from services.auth.servicer import AdminServicer, AuthServicer
from services.auth.store import KeyStore
from services.common.grpc_server import GrpcService, ServiceHost
from services.common.private import private_database, private_dir

SERVICE_NAMES = [
    auth_pb2.DESCRIPTOR.services_by_name[name].full_name for name in ("AuthService", "AdminService")
]
# Settles complete requests admitted before a drain: taken until it ends.
FINISHING = [f"/{SERVICE_NAMES[0]}/SettleQuotas"]
# Health names (not RPC services) for auth's stores: NOT_SERVING while one is
# down. The service itself stays SERVING then: keys without limits, and every
# key while only Redis is down, are still served (edge /readyz shows these).
LIMITS_HEALTH = "aqueduct.auth.v1.Limits"
DATABASE_HEALTH = "aqueduct.auth.v1.Database"
PROBE_EVERY_S = 1.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class AuthServer(GrpcService):
    """Keys, limits and the usage ledger behind one gRPC host."""

    name = "auth"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = KeyStore(settings.database_url)
        self.events = EventHub(settings.redis_url)
        self.counters: Counters = (
            RedisCounters(settings.redis_url) if settings.redis_url else MemoryCounters()
        )
        self.ledger = UsageLedger(self.store, settings.usage_retention_days)
        self.limits = redis_dependency()
        authority = KeyAuthority(self.store)
        self.host = ServiceHost(settings.address, SERVICE_NAMES, FINISHING)
        self.host.on_shutdown.append(self.events.end_streams)  # the edges' watches
        quotas = Quotas(self.counters, self.ledger, settings.reservation_lease_s, self.limits)
        self._prober: asyncio.Task[None] | None = None
        auth_pb2_grpc.add_AuthServiceServicer_to_server(
            AuthServicer(authority, self.events, quotas), self.host.server
        )
        auth_pb2_grpc.add_AdminServiceServicer_to_server(
            AdminServicer(authority, KeyAdmin(self.store, self.events)), self.host.server
        )

    async def ready(self) -> None:
        await asyncio.to_thread(private_dir, self.settings.data_dir)
        await asyncio.to_thread(private_database, self.settings.database_url)
        await asyncio.to_thread(self.store.migrate)
        await asyncio.to_thread(
            bootstrap_admin, self.store, self.settings.data_dir, self.settings.bootstrap_key
        )
        if isinstance(self.counters, RedisCounters):
            await self.counters.ping()
        await self.events.start()
        self.ledger.start()
        self._prober = asyncio.create_task(self._probe_loop())

    async def _probe_loop(self) -> None:
        """Keep the stores' health names current: a store marked down by a failed
        call, or found down here, is SERVING again once a probe answers."""
        probes: list[tuple[str, Dependency, Callable[[], Awaitable[object]]]] = [
            (DATABASE_HEALTH, self.store.database, lambda: asyncio.to_thread(self.store.probe))
        ]
        if isinstance(self.counters, RedisCounters):
            probes.append((LIMITS_HEALTH, self.limits, self.counters.ping))
        else:  # limits in this process: never down
            await self.host.health.set(LIMITS_HEALTH, SERVING)
        while True:
            for name, dependency, probe in probes:
                try:
                    with dependency.guard():
                        await probe()
                except Exception as error:
                    if not isinstance(error, ServiceError):  # not a known fault: down too
                        dependency.failed(error)
                await self.host.health.set(name, SERVING if dependency.up else NOT_SERVING)
            await asyncio.sleep(PROBE_EVERY_S)

    async def close(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober
        await self.events.close()
        await self.ledger.close()
        await self.counters.close()
        await asyncio.to_thread(self.store.close)
