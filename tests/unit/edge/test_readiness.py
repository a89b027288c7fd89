"""The edge's readiness poll: what it sees of each service, and its changes, for /metrics."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2

from edge.readiness import Readiness
from services.common.grpc_server import ServiceHost

SERVICE = "aqueduct.test.v1.Probe"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def test_the_edge_counts_a_service_going_down_and_coming_back() -> None:
    async def scenario() -> None:
        host = ServiceHost("127.0.0.1:0", [SERVICE])
        port = await host.start()
        await host.mark_serving()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        readiness = Readiness({"auth": channel})
        try:
            assert (await readiness.report())[0] == 200
            await host.set_health("", NOT_SERVING)
            assert (await readiness.report())[0] == 503
            await host.set_health("", SERVING)
            await readiness.report()
            await host.stop(0)
            await readiness.report()  # unreachable now
            assert readiness.services == {"auth": "UNAVAILABLE"}
            assert readiness.transitions == {
                ("auth", "NOT_SERVING"): 1,
                ("auth", "SERVING"): 1,
                ("auth", "UNAVAILABLE"): 1,
            }
        finally:
            await channel.close()

    asyncio.run(scenario())
