"""What GET /readyz reports: each service's gRPC health, and as details the
stores auth depends on, which auth reports under health names of their own.
Both are polled every POLL_S for /metrics too, with their changes counted.

A store that is down makes /readyz say "degraded" with that store
NOT_SERVING, but still answer 200: every edge shares the same Redis and
database, so taking edges out of a load balancer helps nobody and would also
stop what still works (keys without limits while Redis is down, cached keys
while the database is down). Alerting reads it from /metrics
(`aqueduct_dependency_up`), which a background poll keeps current.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

TIMEOUT_S = 1.0
POLL_S = 2.0
# detail name -> (service, health name it reports the store under)
STORES = {
    "auth.limits": ("auth", "aqueduct.auth.v1.Limits"),  # Redis: limited keys
    "auth.database": ("auth", "aqueduct.auth.v1.Database"),  # keys, ledger
}


class Readiness:
    def __init__(self, channels: Mapping[str, grpc.aio.Channel]) -> None:
        self.channels = channels
        # The last known state of each service (overall) and store, for /metrics,
        # and how often each changed, by the state it changed to.
        self.services: dict[str, str] = {}
        self.stores: dict[str, str] = {}
        self.transitions: dict[tuple[str, str], int] = {}
        self._poller: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._poller = asyncio.create_task(self._poll())

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller

    async def report(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body) of /readyz."""
        names = list(self.channels)
        _, services = await asyncio.gather(self._check_stores(), self._check_services())
        ready = all(s == "SERVING" for s in services)
        degraded = any(s != "SERVING" for s in self.stores.values())
        status = "unavailable" if not ready else "degraded" if degraded else "ready"
        body = {
            "status": status,
            "services": dict(zip(names, services, strict=True)),
            "dependencies": dict(self.stores),
        }
        return (200 if ready else 503), body

    async def _poll(self) -> None:
        while True:
            await asyncio.gather(self._check_stores(), self._check_services())
            await asyncio.sleep(POLL_S)

    async def _check_services(self) -> list[str]:
        names = list(self.channels)
        states = await asyncio.gather(*(self._status(self.channels[n], "") for n in names))
        for name, state in zip(names, states, strict=True):
            self._note(self.services, name, state)
        return states

    async def _check_stores(self) -> None:
        names = list(STORES)
        states = await asyncio.gather(
            *(self._status(self.channels[STORES[n][0]], STORES[n][1]) for n in names)
        )
        for name, state in zip(names, states, strict=True):
            if state != "NOT_FOUND":  # an auth too old to report it
                self._note(self.stores, name, state)

    def _note(self, states: dict[str, str], name: str, state: str) -> None:
        before = states.get(name)
        states[name] = state
        if before is not None and before != state:
            self.transitions[(name, state)] = self.transitions.get((name, state), 0) + 1

    async def _status(self, channel: grpc.aio.Channel, service: str) -> str:
        check = health_pb2_grpc.HealthStub(channel).Check  # type: ignore[attr-defined]
        try:
            answer = await check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT_S)
        except grpc.aio.AioRpcError as error:
            return str(error.code().name)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))
