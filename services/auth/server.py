"""Build and run the auth service."""

from __future__ import annotations

import asyncio

from aqueduct.auth.v1 import auth_pb2, auth_pb2_grpc

from services.auth.authority import KeyAuthority, bootstrap_admin
from services.auth.config import Settings
from services.auth.counters import MemoryCounters
from services.auth.counters_redis import RedisCounters
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
        authority = KeyAuthority(self.store)
        self.host = ServiceHost(settings.address, SERVICE_NAMES)
        quotas = Quotas(self.counters, self.ledger, settings.reservation_lease_s)
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

    async def close(self) -> None:
        await self.events.close()
        await self.ledger.close()
        await self.counters.close()
        await asyncio.to_thread(self.store.close)
