"""A gRPC service host refuses an address another server already listens on."""

from __future__ import annotations

import asyncio

import pytest

from core.config import ConfigError
from services.common.grpc_server import ServiceHost


def test_a_second_service_on_a_taken_port_fails_to_start_instead_of_sharing_it() -> None:
    async def two_on_one_port() -> None:
        first = ServiceHost("127.0.0.1:0", [])
        port = await first.start()
        try:
            second = ServiceHost(f"127.0.0.1:{port}", [])
            with pytest.raises(ConfigError, match=f"127.0.0.1:{port}"):
                await second.start()
        finally:
            await first.stop(0)

    asyncio.run(two_on_one_port())
