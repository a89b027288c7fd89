"""A local model served by another inference worker (services.inference.forwarded):
what is sent there, what comes back, and that closing the stream cancels the call."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from aqueduct.inference.v1 import inference_pb2 as pb

from core.errors import Kind, ServiceError
from core.request_id import REQUEST_ID
from core.status import to_grpc_status
from services.inference import convert
from services.inference.embedding import EmbedRequest
from services.inference.forwarded import ForwardedModel, LocalModelsPeer
from services.inference.generation import ChatRequest, Delta, Finish, Message


class FakeCall:
    """A server-streaming call: its messages, then maybe an error."""

    def __init__(self, messages: list[Any], error: grpc.aio.AioRpcError | None = None) -> None:
        self.messages = messages
        self.error = error
        self.cancelled = False

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._read()

    async def _read(self) -> AsyncIterator[Any]:
        for message in self.messages:
            yield message
        if self.error is not None:
            raise self.error

    def cancel(self) -> bool:
        self.cancelled = True
        return True


class FakeStub:
    def __init__(self, call: FakeCall) -> None:
        self.call = call
        self.sent: list[Any] = []

    def StreamChatCompletion(self, message: Any) -> FakeCall:  # the gRPC name
        self.sent.append(message)
        return self.call

    async def CreateEmbeddings(self, message: Any) -> Any:
        self.sent.append(message)
        if self.call.error is not None:
            raise self.call.error
        return pb.CreateEmbeddingsResponse(
            embeddings=[pb.Embedding(index=0, values=[0.5, 0.25])], usage=pb.Usage(prompt_tokens=3)
        )


def rpc_error(error: ServiceError) -> grpc.aio.AioRpcError:
    status = to_grpc_status(error)
    return grpc.aio.AioRpcError(
        status.code,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(*status.trailing_metadata),
        status.details,
    )


def model(call: FakeCall) -> tuple[ForwardedModel, FakeStub]:
    peer = LocalModelsPeer.__new__(LocalModelsPeer)
    stub = FakeStub(call)
    peer.stub = stub  # type: ignore[assignment]
    return ForwardedModel("local-1", peer), stub


REQUEST = ChatRequest(
    model="alias-of-local",
    messages=(Message("user", "hi"),),
    fallback_models=("other",),
    allowed_models=("alias-of-local", "other"),
)
STREAM = [
    pb.StreamChatCompletionResponse(
        deltas=pb.DeltaBatch(deltas=[pb.Delta(choice_index=0, content="he", tokens=1)])
    ),
    pb.StreamChatCompletionResponse(deltas=pb.DeltaBatch(deltas=[pb.Delta(content="y")])),
    pb.StreamChatCompletionResponse(
        summary=convert.summary_message(Finish({0: "stop"}, 4, 2), "local-1")
    ),
]


async def collect(forwarded: ForwardedModel) -> list[Any]:
    async with contextlib.aclosing(forwarded.stream_chat(REQUEST)) as events:
        return [e async for e in events]


def test_the_request_goes_for_this_model_alone_with_its_request_id() -> None:
    forwarded, stub = model(FakeCall(STREAM))

    async def scenario() -> list[Any]:
        REQUEST_ID.set("req-42")
        return await collect(forwarded)

    events = asyncio.run(scenario())
    assert events == [[Delta(0, "he", tokens=1)], [Delta(0, "y")], Finish({0: "stop"}, 4, 2)]
    [sent] = stub.sent
    assert sent.model == "local-1"  # the served model, not the alias asked for
    assert list(sent.fallback_models) == [] and list(sent.allowed_models) == []
    assert sent.no_configured_fallbacks  # the router here already chose
    assert sent.request_id == "req-42"
    assert [m.content for m in sent.messages] == ["hi"]


def test_closing_the_stream_early_cancels_the_forwarded_call() -> None:
    call = FakeCall(STREAM)
    forwarded, _ = model(call)

    async def scenario() -> None:
        async with contextlib.aclosing(forwarded.stream_chat(REQUEST)) as events:
            await anext(events)
        assert call.cancelled

    asyncio.run(scenario())


def test_the_owners_error_comes_back_as_raised_there() -> None:
    busy = ServiceError(Kind.UNAVAILABLE, "MODEL_BUSY", "Model 'local-1' is busy.")
    bad = ServiceError(
        Kind.INVALID_ARGUMENT, "PROMPT_TOO_LONG", "Too long.", param="messages", metadata={"n": "9"}
    )
    for error in (busy, bad):
        forwarded, _ = model(FakeCall(STREAM[:1], rpc_error(error)))
        with pytest.raises(ServiceError) as raised:
            asyncio.run(collect(forwarded))
        got = raised.value
        assert (got.kind, got.reason, got.message, got.param, got.metadata) == (
            error.kind,
            error.reason,
            error.message,
            error.param,
            error.metadata,
        )


def test_an_unreachable_or_stopping_owner_is_unavailable_so_fallbacks_apply() -> None:
    down = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "connect failed"
    )
    stopping = rpc_error(ServiceError(Kind.UNAVAILABLE, "SHUTTING_DOWN", "Shutting down."))
    for error in (down, stopping):
        forwarded, _ = model(FakeCall([], error))
        with pytest.raises(ServiceError) as raised:
            asyncio.run(collect(forwarded))
        assert (raised.value.kind, raised.value.reason) == (
            Kind.UNAVAILABLE,
            "LOCAL_MODEL_UNAVAILABLE",
        )


def test_embeddings_are_forwarded_too() -> None:
    forwarded, stub = model(FakeCall([]))
    result = asyncio.run(
        forwarded.embed(EmbedRequest(model="e", inputs=("a",), fallback_models=("f",)))
    )
    assert result.prompt_tokens == 3 and [row.tolist() for row in result.vectors] == [[0.5, 0.25]]
    [sent] = stub.sent
    assert sent.model == "local-1" and sent.no_configured_fallbacks
    assert list(sent.fallback_models) == []
