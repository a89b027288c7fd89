"""Health that means something is also a metric: each service counts its own
health names' states and changes."""

from __future__ import annotations

import asyncio

from grpc_health.v1 import health_pb2

from services.common.grpc_server import ServiceHost

SERVICE = "aqueduct.test.v1.Probe"
STORE = "aqueduct.auth.v1.Limits"  # a store's health name, as auth reports Redis
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def metric(host: ServiceHost, name: str, **labels: str) -> float | None:
    return host.metrics.registry.get_sample_value(name, labels)


def test_a_service_counts_its_health_names_and_their_changes() -> None:
    async def scenario() -> None:
        host = ServiceHost("127.0.0.1:0", [SERVICE])
        await host.start()
        serving = "aqueduct_health_serving"
        changed = "aqueduct_health_transitions_total"
        assert metric(host, serving, health_name=SERVICE) == 0  # not ready yet
        await host.mark_serving()
        assert metric(host, serving, health_name=SERVICE) == 1
        assert metric(host, changed, health_name=SERVICE, to="SERVING") == 1
        await host.set_health(STORE, SERVING)
        for _ in range(3):  # a probe that finds the same state again changes nothing
            await host.set_health(STORE, NOT_SERVING)
        await host.set_health(STORE, SERVING)
        assert metric(host, serving, health_name=STORE) == 1
        assert metric(host, changed, health_name=STORE, to="NOT_SERVING") == 1
        assert metric(host, changed, health_name=STORE, to="SERVING") == 1
        await host.stop(0)  # the drain: every name NOT_SERVING
        assert metric(host, serving, health_name=SERVICE) == 0
        assert metric(host, changed, health_name=SERVICE, to="NOT_SERVING") == 1
        assert metric(host, changed, health_name=STORE, to="NOT_SERVING") == 2

    asyncio.run(scenario())
