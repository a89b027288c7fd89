"""A service's drain, on a real grpc.aio server: new work refused at once,
long-lived streams ended, running work and finishing calls (settles) still
served, and the stop as soon as nothing is left, well within the grace."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from core.status import error_info
from services.common.drain import FINISHING_QUIET_S
from services.common.grpc_server import ServiceHost


class Probe:
    """A service with work that runs until released, a settle, and a watch
    stream that runs until the host's shutdown hook ends it."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.watch_ended = asyncio.Event()
        self.working = asyncio.Event()
        self.settled = 0

    async def work(self, request: bytes, context: Any) -> bytes:
        self.working.set()
        await self.release.wait()
        return b"done"

    async def settle(self, request: bytes, context: Any) -> bytes:
        self.settled += 1
        return b"settled"

    async def watch(self, request: bytes, context: Any) -> None:
        await context.write(b"ready")
        await self.watch_ended.wait()

    def handlers(self) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
        return {
            "Work": grpc.unary_unary_rpc_method_handler(self.work),
            "Settle": grpc.unary_unary_rpc_method_handler(self.settle),
            "Watch": grpc.unary_stream_rpc_method_handler(self.watch),
        }


def on_host(
    test: Callable[[ServiceHost, Probe, grpc.aio.Channel], Awaitable[None]],
    finishing: tuple[str, ...] = ("/test.Probe/Settle",),
) -> None:
    async def run() -> None:
        probe = Probe()
        host = ServiceHost("127.0.0.1:0", ["test.Probe"], finishing)
        host.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("test.Probe", probe.handlers()),)
        )
        host.on_shutdown.append(probe.watch_ended.set)
        port = await host.start()
        await host.mark_serving()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                await test(host, probe, channel)
        finally:
            await host.stop(0)

    asyncio.run(run())


async def health(channel: grpc.aio.Channel) -> int:
    answer = await health_pb2_grpc.HealthStub(channel).Check(  # type: ignore[attr-defined]
        health_pb2.HealthCheckRequest(), timeout=5
    )
    return int(answer.status)


def test_a_draining_service_refuses_new_work_ends_watches_and_takes_settles() -> None:
    async def test(host: ServiceHost, probe: Probe, channel: grpc.aio.Channel) -> None:
        loop = asyncio.get_running_loop()
        watch = channel.unary_stream("/test.Probe/Watch")(b"", timeout=30)
        assert await watch.read() == b"ready"
        running = asyncio.ensure_future(channel.unary_unary("/test.Probe/Work")(b"", timeout=30))
        await asyncio.wait_for(probe.working.wait(), 5)

        began = loop.time()
        stopping = asyncio.ensure_future(host.stop(30))
        await asyncio.sleep(0.2)
        assert await watch.read() is grpc.aio.EOF  # ended, not left to hold the grace
        assert await health(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await channel.unary_unary("/test.Probe/Work")(b"", timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        info = error_info(refused.value)
        assert info is not None and info.reason == "SHUTTING_DOWN"
        assert info.metadata["retry_after_s"] == "1"
        for _ in range(3):  # while the admitted work still runs
            assert await channel.unary_unary("/test.Probe/Settle")(b"", timeout=5) == b"settled"
        assert not stopping.done()

        probe.release.set()
        assert await running == b"done"  # the admitted work finished
        await asyncio.wait_for(stopping, 10)
        assert probe.settled == 3
        # Done a quiet moment after the last settle: nowhere near the grace.
        assert loop.time() - began < FINISHING_QUIET_S + 5

    on_host(test)


def test_without_work_or_finishing_calls_the_stop_does_not_wait_for_open_watches() -> None:
    async def test(host: ServiceHost, probe: Probe, channel: grpc.aio.Channel) -> None:
        loop = asyncio.get_running_loop()
        watch = channel.unary_stream("/test.Probe/Watch")(b"", timeout=30)
        assert await watch.read() == b"ready"
        began = loop.time()
        await asyncio.wait_for(host.stop(30), 10)
        assert loop.time() - began < 5
        assert await watch.read() is grpc.aio.EOF

    on_host(test, finishing=())


def test_work_still_running_at_the_end_of_the_grace_is_cancelled() -> None:
    async def test(host: ServiceHost, probe: Probe, channel: grpc.aio.Channel) -> None:
        running = asyncio.ensure_future(channel.unary_unary("/test.Probe/Work")(b"", timeout=30))
        await asyncio.wait_for(probe.working.wait(), 5)
        await asyncio.wait_for(host.stop(0.5), 10)
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await running
        assert ended.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)

    on_host(test)
