"""Prepared generation calls (PreparedChatCompletion; edge/prepared_calls.py)
against a real inference service over gRPC on 127.0.0.1, upstream faked."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from aqueduct.inference.v1 import inference_pb2 as pb
from aqueduct.inference.v1 import inference_pb2_grpc

from core.status import error_info
from edge.prepared_calls import GenerationCalls, prepared_method
from services.inference.config import Settings
from services.inference.server import InferenceServer
from tests.fake_upstream import FakeUpstream, Reply
from tests.stack import LoopThread

IDLE_CALL_S = 0.5
REQUEST = pb.StreamChatCompletionRequest(
    model="m", messages=[pb.ChatMessage(role="user", content="hi")]
)
ChatCalls = GenerationCalls[pb.StreamChatCompletionRequest, pb.StreamChatCompletionResponse]


@dataclass
class Service:
    loop: LoopThread
    server: InferenceServer
    channel: grpc.aio.Channel
    stub: inference_pb2_grpc.InferenceServiceAsyncStub
    calls: ChatCalls

    def run(self, coro: Any) -> Any:
        return self.loop.run(coro, timeout=30)

    def on_loop(self, action: Callable[[], object]) -> None:
        """Run `action` on the service's loop (gRPC objects belong to it)."""

        async def act() -> None:
            action()

        self.run(act())

    def wait_until(self, condition: Callable[[], bool]) -> None:
        async def wait() -> None:
            while not condition():
                await asyncio.sleep(0.01)

        self.run(asyncio.wait_for(wait(), 10))


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream("prepared").start()
    fake.default = Reply.stream("Hello", " there")
    yield fake
    fake.stop()


@pytest.fixture
def service(tmp_path: Path, upstream: FakeUpstream) -> Iterator[Service]:
    config = tmp_path / "models.yaml"
    config.write_text(
        f'models:\n  - name: m\n    backend: openai\n    upstreams: [{{url: "{upstream.url}"}}]\n'
    )
    loop = LoopThread()

    async def open_service() -> Service:
        server = InferenceServer(  # on the loop: the gRPC server binds to it
            Settings(address="127.0.0.1:0", models_config=config, idle_call_s=IDLE_CALL_S)
        )
        port = await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        stub: Any = inference_pb2_grpc.InferenceServiceStub(channel)
        calls: ChatCalls = GenerationCalls(
            prepared_method(channel, "PreparedChatCompletion", pb.StreamChatCompletionResponse),
            stub.StreamChatCompletion,
        )
        return Service(loop, server, channel, stub, calls)

    running = loop.run(open_service(), timeout=60)
    yield running
    loop.run(running.channel.close())
    loop.run(running.server.stop(0.5))
    loop.close()


async def generate(calls: ChatCalls) -> str:
    """One request's answer text, through `calls` (as the edge sends it)."""
    call = await calls.start(REQUEST)
    text, answered = "", False
    try:
        while (message := await call.read()) is not grpc.aio.EOF:
            assert isinstance(message, pb.StreamChatCompletionResponse)
            text += "".join(d.content for d in message.deltas.deltas)
            answered = message.HasField("summary")
    finally:
        call.finish(answered)
    return text


async def status_of(call: Any) -> tuple[grpc.StatusCode, str]:
    """A call's status code and ErrorInfo reason, once it has ended."""
    code = await call.code()
    trailers = await call.trailing_metadata()
    info = error_info(grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailers))
    return code, info.reason if info else ""


def test_a_request_on_a_prepared_call_is_answered_like_one_on_a_plain_call(
    service: Service, upstream: FakeUpstream
) -> None:
    assert service.run(generate(service.calls)) == "Hello there"  # plain: none prepared yet
    service.wait_until(lambda: service.server.servicer.idle_calls == 1)  # left behind
    assert service.calls.ready == 1
    assert service.run(generate(service.calls)) == "Hello there"  # on the prepared call
    assert upstream.requests == 2
    assert upstream.received[0] == upstream.received[1]


def test_a_client_of_the_generated_stub_gets_the_prepared_method_s_own_types(
    service: Service,
) -> None:
    async def typed() -> list[pb.PreparedChatCompletionResponse]:
        call = service.stub.PreparedChatCompletion()
        await call.write(pb.PreparedChatCompletionRequest(request=REQUEST))
        await call.done_writing()
        return [message async for message in call]

    messages = service.run(typed())
    assert all(isinstance(m, pb.PreparedChatCompletionResponse) for m in messages)
    assert "".join(d.content for m in messages for d in m.deltas.deltas) == "Hello there"
    assert messages[-1].summary.usage.completion_tokens > 0


def test_an_idle_prepared_call_ends_after_the_service_s_limit_and_requests_still_go(
    service: Service, upstream: FakeUpstream
) -> None:
    async def idle_call() -> tuple[float, tuple[grpc.StatusCode, str]]:
        started = time.monotonic()
        status = await status_of(service.stub.PreparedChatCompletion())
        return time.monotonic() - started, status

    waited, status = service.run(idle_call())
    assert waited >= IDLE_CALL_S * 0.8
    assert status == (grpc.StatusCode.UNAVAILABLE, "IDLE_CALL_CLOSED")
    service.on_loop(service.calls.replenish)
    time.sleep(IDLE_CALL_S * 2)  # the edge's prepared call has ended too
    assert service.run(generate(service.calls)) == "Hello there"
    assert upstream.requests == 1


def test_a_request_sent_as_the_service_closes_the_call_is_served_once_on_a_plain_call(
    service: Service, upstream: FakeUpstream
) -> None:
    service.on_loop(service.calls.replenish)
    service.wait_until(lambda: service.server.servicer.idle_calls == 1)

    async def close_and_send() -> str:
        service.server.servicer.close_idle_calls()  # as shutdown begins
        return await generate(service.calls)

    assert service.run(close_and_send()) == "Hello there"
    assert upstream.requests == 1

    async def open_after_shutdown_began() -> tuple[grpc.StatusCode, str]:
        return await status_of(service.stub.PreparedChatCompletion())

    # Opened once shutdown has begun: ended at once, not left to outwait the grace.
    service.server.servicer.idle_call_s = 60.0
    assert service.run(open_after_shutdown_began()) == (
        grpc.StatusCode.UNAVAILABLE,
        "IDLE_CALL_CLOSED",
    )


def test_shutdown_does_not_wait_for_idle_prepared_calls(service: Service) -> None:
    service.server.servicer.idle_call_s = 60.0  # it would outwait the grace

    async def open_then_stop() -> tuple[float, tuple[grpc.StatusCode, str]]:
        call = service.stub.PreparedChatCompletion()
        while service.server.servicer.idle_calls == 0:
            await asyncio.sleep(0.01)
        started = time.monotonic()
        await service.server.stop(10.0)  # the grace would be all 10 s if it waited
        return time.monotonic() - started, await status_of(call)

    took, status = service.run(open_then_stop())
    assert took < 5.0
    assert status == (grpc.StatusCode.UNAVAILABLE, "IDLE_CALL_CLOSED")


def test_a_prepared_call_cancelled_or_closed_unused_leaves_nothing_waiting(
    service: Service, upstream: FakeUpstream
) -> None:
    async def close_unused() -> tuple[grpc.StatusCode, str]:
        call = service.stub.PreparedChatCompletion()
        while service.server.servicer.idle_calls == 0:
            await asyncio.sleep(0.01)
        await call.done_writing()
        assert await call.read() is grpc.aio.EOF  # no message
        return await status_of(call)

    assert service.run(close_unused()) == (grpc.StatusCode.OK, "")
    service.on_loop(service.calls.replenish)
    service.wait_until(lambda: service.server.servicer.idle_calls == 1)
    service.on_loop(service.calls.close)  # cancels it
    service.wait_until(lambda: service.server.servicer.idle_calls == 0)
    assert upstream.requests == 0
