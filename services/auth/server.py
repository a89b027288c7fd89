"""Build and run the auth service."""

from __future__ import annotations

import asyncio

from aqueduct.auth.v1 import auth_pb2, auth_pb2_grpc

from services.auth.authority import KeyAuthority, bootstrap_admin
from services.auth.config import Settings
from services.auth.servicer import AuthServicer
from services.auth.store import KeyStore
from services.common.grpc_server import GrpcService, ServiceHost

SERVICE_NAME = auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name


class AuthServer(GrpcService):
    """The auth service: a key store behind a gRPC host."""

    name = "auth"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = KeyStore(settings.database_url)
        self.host = ServiceHost(settings.address, [SERVICE_NAME])
        auth_pb2_grpc.add_AuthServiceServicer_to_server(
            AuthServicer(KeyAuthority(self.store)), self.host.server
        )

    async def ready(self) -> None:
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self.store.create_schema)
        await asyncio.to_thread(
            bootstrap_admin, self.store, self.settings.data_dir, self.settings.bootstrap_key
        )

    async def close(self) -> None:
        await asyncio.to_thread(self.store.close)
