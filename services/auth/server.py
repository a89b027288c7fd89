"""Build and run the auth service."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aqueduct.auth.v1 import auth_pb2, auth_pb2_grpc
from grpc_health.v1 import health_pb2

from core.errors import ServiceError
from services.auth.authority import KeyAuthority, bootstrap_admin
from services.auth.config import Settings
from services.auth.counters import MemoryCounters
from services.auth.dependencies import Dependency, limits_dependency, redis_dependency
from services.auth.events import EventHub
from services.auth.key_admin import KeyAdmin
from services.auth.key_limits import KeyLimitsSource
from services.auth.ledger import UsageLedger
from services.auth.quotas import Counters, Quotas
from services.auth.servicer import AdminServicer, AuthServicer
from services.auth.store import KeyStore
from services.auth.team_view import TeamView
from services.common.grpc_server import GrpcService, ServiceHost
from services.common.identity import ADMIN, EDGE, FILES, INFERENCE, Access
from services.common.private import private_database, private_dir

if TYPE_CHECKING:
    from services.auth.counters_redis import RedisCounters

SERVICE_NAMES = [
    auth_pb2.DESCRIPTOR.services_by_name[name].full_name for name in ("AuthService", "AdminService")
]
# With mTLS: the key plane is the edge's; files and inference verify the keys
# their other callers present, and inference meters those callers (reserves
# and settles for them); admin calls also come from the CLI (certificate CN
# `admin`), which still needs an admin key in its metadata.
VERIFY_KEY, RESERVE, SETTLE, SETTLE_AND_RESERVE = (
    f"/{SERVICE_NAMES[0]}/{m}"
    for m in ("VerifyKey", "ReserveQuota", "SettleQuotas", "SettleAndReserveQuota")
)
ACCESS = Access(
    {SERVICE_NAMES[0]: frozenset({EDGE}), SERVICE_NAMES[1]: frozenset({EDGE, ADMIN})},
    {
        VERIFY_KEY: frozenset({EDGE, FILES, INFERENCE}),
        RESERVE: frozenset({EDGE, INFERENCE}),
        SETTLE: frozenset({EDGE, INFERENCE}),
        SETTLE_AND_RESERVE: frozenset({EDGE, INFERENCE}),
    },
)
# Settles complete requests admitted before a drain: taken until it ends.
FINISHING = [SETTLE]
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
        self.redis_counters: RedisCounters | None = None
        self.counters: Counters = MemoryCounters()
        self.limits = limits_dependency()
        if settings.redis_url:
            # Imported only then: auth without Redis never loads its client (~8 MiB).
            from services.auth.counters_redis import RedisCounters

            self.counters = self.redis_counters = RedisCounters(settings.redis_url)
            self.limits = redis_dependency()
        self.ledger = UsageLedger(self.store, settings.usage_retention_days)
        authority = KeyAuthority(self.store)
        self.key_limits = KeyLimitsSource(self.store, self.events)
        self.host = ServiceHost(settings.address, SERVICE_NAMES, FINISHING, access=ACCESS)
        self.host.on_shutdown.append(self.events.end_streams)  # the edges' watches
        quotas = Quotas(self.counters, self.ledger, settings.reservation_lease_s, self.limits)
        self._prober: asyncio.Task[None] | None = None
        auth_pb2_grpc.add_AuthServiceServicer_to_server(
            AuthServicer(authority, self.events, quotas, self.key_limits), self.host.server
        )
        auth_pb2_grpc.add_AdminServiceServicer_to_server(
            AdminServicer(authority, KeyAdmin(self.store, self.events), TeamView(self.store)),
            self.host.server,
        )

    async def prepare(self) -> None:
        # Before the port takes calls: none may find the tables missing.
        await asyncio.to_thread(private_dir, self.settings.data_dir)
        await asyncio.to_thread(private_database, self.settings.database_url)
        await asyncio.to_thread(self.store.migrate)

    async def ready(self) -> None:
        await asyncio.to_thread(
            bootstrap_admin, self.store, self.settings.data_dir, self.settings.bootstrap_key
        )
        if self.redis_counters is not None:
            await self.redis_counters.ping()
        await self.events.start()
        self.key_limits.start()
        self.ledger.start()
        self._prober = asyncio.create_task(self._probe_loop())

    async def _probe_loop(self) -> None:
        """Keep the stores' health names current: a store marked down by a failed
        call, or found down here, is SERVING again once a probe answers."""
        probes: list[tuple[str, Dependency, Callable[[], Awaitable[object]]]] = [
            (DATABASE_HEALTH, self.store.database, lambda: asyncio.to_thread(self.store.probe))
        ]
        if self.redis_counters is not None:
            probes.append((LIMITS_HEALTH, self.limits, self.redis_counters.ping))
        else:  # limits in this process: never down
            await self.host.set_health(LIMITS_HEALTH, SERVING)
        while True:
            for name, dependency, probe in probes:
                try:
                    with dependency.guard():
                        await probe()
                except Exception as error:
                    if not isinstance(error, ServiceError):  # not a known fault: down too
                        dependency.failed(error)
                await self.host.set_health(name, SERVING if dependency.up else NOT_SERVING)
            await asyncio.sleep(PROBE_EVERY_S)

    async def close(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober
        await self.key_limits.close()
        await self.events.close()
        await self.ledger.close()
        await self.counters.close()
        await asyncio.to_thread(self.store.close)
