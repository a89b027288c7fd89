"""Which call a request goes on (edge/prepared_calls.py), against fake calls."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from aqueduct.inference.v1 import inference_pb2 as pb

from core.errors import Kind, ServiceError
from core.status import to_grpc_status
from edge.prepared_calls import GenerationCalls, as_field_1


class FakeCall:
    def __init__(self, messages: list[object] | None = None) -> None:
        self.messages = list(messages or [])
        self.sent: list[object] = []
        self.ended = False
        self.cancelled = False
        self.write_error: BaseException | None = None
        self.read_error: BaseException | None = None

    async def write(self, request: object) -> None:
        if self.write_error is not None:
            raise self.write_error
        self.sent.append(request)

    async def read(self) -> object:
        if self.read_error is not None:
            raise self.read_error
        return self.messages.pop(0) if self.messages else grpc.aio.EOF

    def done(self) -> bool:
        return self.ended or self.cancelled

    def cancel(self) -> bool:
        self.cancelled = True
        return True


class Opener:
    """Stands in for a stub's multi-callable: records what it opened."""

    def __init__(self, messages: list[object] | None = None) -> None:
        self.opened: list[FakeCall] = []
        self.requests: list[object] = []
        self.messages = messages

    def __call__(self, request: object = None) -> FakeCall:
        call = FakeCall(self.messages)
        self.opened.append(call)
        if request is not None:
            self.requests.append(request)
        return call


def calls(prepared: Opener, plain: Opener, **options: Any) -> GenerationCalls[Any, Any]:
    return GenerationCalls(prepared, plain, **options)  # type: ignore[arg-type]


class FakeUnaryCall:
    """A unary call: awaited for its answer (or error)."""

    def __init__(self, outcome: object) -> None:
        self.outcome = outcome
        self.cancelled = False

    def __await__(self) -> Any:
        yield from asyncio.sleep(0).__await__()
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome

    def done(self) -> bool:
        return self.cancelled

    def cancel(self) -> bool:
        self.cancelled = True
        return True


class UnaryOpener:
    def __init__(self, outcome: object) -> None:
        self.outcome = outcome
        self.opened: list[FakeUnaryCall] = []
        self.requests: list[object] = []

    def __call__(self, request: object) -> FakeUnaryCall:
        self.requests.append(request)
        self.opened.append(FakeUnaryCall(self.outcome))
        return self.opened[-1]


def unimplemented() -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        grpc.StatusCode.UNIMPLEMENTED, grpc.aio.Metadata(), grpc.aio.Metadata(), "no such method"
    )


def closed_unread() -> grpc.aio.AioRpcError:
    status = to_grpc_status(ServiceError(Kind.UNAVAILABLE, "IDLE_CALL_CLOSED", "idle"))
    return grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(*status.trailing_metadata),
        details="idle",
    )


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_without_a_prepared_call_the_request_opens_a_plain_one_and_leaves_one_behind() -> None:
    prepared, plain = Opener(), Opener(["answer"])
    generation = calls(prepared, plain)
    call = run(generation.start("request"))
    assert plain.requests == ["request"]
    assert run(call.read()) == "answer"
    assert generation.ready == 0
    call.finish(answered=True)
    assert generation.ready == 1 and len(prepared.opened) == 1


def test_a_request_that_does_not_stream_goes_whole_on_the_unary_method() -> None:
    prepared, plain, whole = Opener(), Opener(), UnaryOpener("whole answer")
    generation = calls(prepared, plain, whole=whole)

    async def scenario() -> None:
        call = await generation.start("request", stream=False)
        assert await call.read() == "whole answer"
        call.finish(answered=True)

    run(scenario())
    assert whole.requests == ["request"]
    assert plain.opened == [] and prepared.opened == []  # nor a prepared call left behind
    assert generation.running == 0 and generation.ready == 0
    assert not whole.opened[0].cancelled


def test_a_streamed_request_never_goes_on_the_unary_method() -> None:
    plain, whole = Opener(["delta"]), UnaryOpener("whole answer")
    generation = calls(Opener(), plain, whole=whole)
    call = run(generation.start("request", stream=True))
    assert run(call.read()) == "delta"
    assert whole.requests == []


def test_a_whole_call_that_ends_unanswered_is_cancelled() -> None:
    whole = UnaryOpener("whole answer")
    generation = calls(Opener(), Opener(), whole=whole)
    call = run(generation.start("request", stream=False))
    call.finish(answered=False)  # the client left before the answer
    assert whole.opened[0].cancelled


def test_a_service_older_than_the_unary_methods_gets_streams_from_then_on() -> None:
    prepared, plain, whole = Opener(), Opener(["from a stream"]), UnaryOpener(unimplemented())
    generation = calls(prepared, plain, whole=whole)

    async def scenario() -> None:
        call = await generation.start("first", stream=False)
        assert await call.read() == "from a stream"
        call.finish(answered=True)
        await generation.start("second", stream=False)

    run(scenario())
    assert whole.requests == ["first"]
    on_streams = plain.requests + [sent for call in prepared.opened for sent in call.sent]
    assert on_streams == ["first", "second"]  # the second on the prepared call the first left
    assert generation.whole is None


def test_other_failures_of_a_whole_call_are_the_request_s_own() -> None:
    failure = closed_unread()
    plain, whole = Opener(), UnaryOpener(failure)
    generation = calls(Opener(), plain, whole=whole)
    call = run(generation.start("request", stream=False))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        run(call.read())
    assert caught.value is failure
    assert plain.opened == [] and generation.whole is whole


def test_the_next_request_goes_as_the_message_of_the_prepared_call() -> None:
    prepared, plain = Opener(["from prepared"]), Opener()
    generation = calls(prepared, plain)
    generation.replenish()
    call = run(generation.start("request"))
    assert prepared.opened[0].sent == ["request"]
    assert plain.opened == []
    assert run(call.read()) == "from prepared"
    assert generation.ready == 0


def test_a_prepared_call_that_has_ended_is_not_used() -> None:
    prepared, plain = Opener(), Opener(["plain"])
    generation = calls(prepared, plain)
    generation.replenish()
    prepared.opened[0].ended = True
    call = run(generation.start("request"))
    assert prepared.opened[0].sent == []
    assert plain.requests == ["request"]
    assert run(call.read()) == "plain"


@pytest.mark.parametrize(
    "error", [asyncio.InvalidStateError("finished"), closed_unread()], ids=["ended", "status"]
)
def test_a_prepared_call_that_cannot_take_the_request_is_cancelled_for_a_plain_one(
    error: BaseException,
) -> None:
    prepared, plain = Opener(), Opener(["plain"])
    generation = calls(prepared, plain)
    generation.replenish()
    prepared.opened[0].write_error = error
    call = run(generation.start("request"))
    assert prepared.opened[0].cancelled
    assert plain.requests == ["request"]
    assert run(call.read()) == "plain"


def test_a_request_the_service_closed_unread_is_sent_again_on_a_plain_call() -> None:
    prepared, plain = Opener(), Opener(["plain answer"])
    generation = calls(prepared, plain)
    generation.replenish()
    prepared.opened[0].read_error = closed_unread()
    call = run(generation.start("request"))
    assert run(call.read()) == "plain answer"
    assert plain.requests == ["request"]


def test_other_failures_of_a_prepared_call_are_the_request_s_own() -> None:
    prepared, plain = Opener(), Opener()
    generation = calls(prepared, plain)
    generation.replenish()
    prepared.opened[0].read_error = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), details="down"
    )
    call = run(generation.start("request"))
    with pytest.raises(grpc.aio.AioRpcError):
        run(call.read())
    assert plain.opened == []


def test_a_plain_call_closed_unread_is_not_sent_again() -> None:
    prepared, plain = Opener(), Opener()
    generation = calls(prepared, plain)
    call = run(generation.start("request"))
    plain.opened[0].read_error = closed_unread()
    with pytest.raises(grpc.aio.AioRpcError):
        run(call.read())
    assert len(plain.opened) == 1


def test_prepared_calls_past_their_age_are_closed_not_used() -> None:
    prepared, plain = Opener(), Opener()
    generation = calls(prepared, plain, max_age_s=-1.0)  # every call is too old
    generation.replenish()
    generation.replenish()
    run(generation.start("request"))
    assert all(call.cancelled and call.sent == [] for call in prepared.opened)
    assert plain.requests == ["request"]
    assert generation.ready == 0


def test_at_most_max_spares_are_kept_and_dead_ones_are_dropped() -> None:
    prepared, plain = Opener(), Opener()
    generation = calls(prepared, plain, max_spares=3)
    for _ in range(5):
        generation.replenish()
    assert generation.ready == 3 and len(prepared.opened) == 3
    prepared.opened[0].ended = True  # the oldest, ended by the service
    generation.replenish()
    assert generation.ready == 3 and len(prepared.opened) == 4


def test_finishing_a_request_cancels_its_call_unless_it_was_answered_in_full() -> None:
    prepared, plain = Opener(), Opener()
    generation = calls(prepared, plain)
    cut = run(generation.start("request"))
    cut.finish(answered=False)
    assert plain.opened[0].cancelled
    answered = run(generation.start("another"))
    answered.finish(answered=True)
    assert not prepared.opened[0].cancelled  # its status is on the way
    ended = run(generation.start("third"))
    prepared.opened[1].ended = True
    ended.finish(answered=False)
    assert not prepared.opened[1].cancelled  # an ended call is left alone


def test_a_busy_edge_leaves_no_prepared_call_behind() -> None:
    prepared, plain = Opener(), Opener()
    generation = calls(prepared, plain, max_spares=2)
    first, second, third = (run(generation.start(n)) for n in ("1", "2", "3"))
    first.finish(answered=True)  # two still running: busy
    assert generation.ready == 0 and prepared.opened == []
    second.finish(answered=True)  # one running
    assert generation.ready == 1
    third.finish(answered=True)
    assert generation.ready == 2


@pytest.mark.parametrize("content", ["hi", "x" * 200, "y" * 20_000])  # 1-, 2- and 3-byte lengths
def test_a_request_sent_on_a_prepared_method_decodes_as_its_wrapper(content: str) -> None:
    request = pb.StreamChatCompletionRequest(
        model="m",
        messages=[pb.ChatMessage(role="user", content=content)],
        sampling=pb.SamplingParams(max_tokens=5, stops=["\n"]),
    )
    wrapped = pb.PreparedChatCompletionRequest.FromString(as_field_1(request))
    assert wrapped.request == request
    assert (
        as_field_1(request) == pb.PreparedChatCompletionRequest(request=request).SerializeToString()
    )


@pytest.mark.parametrize(
    ("prepared", "plain"),
    [
        (pb.PreparedChatCompletionRequest, pb.StreamChatCompletionRequest),
        (pb.PreparedCompletionRequest, pb.StreamCompletionRequest),
        # The unary methods' requests are sent the same way (whole_method).
        (pb.ChatCompletionRequest, pb.StreamChatCompletionRequest),
        (pb.CompletionRequest, pb.StreamCompletionRequest),
    ],
)
def test_each_prepared_request_holds_the_plain_request_as_its_only_field(
    prepared: Any, plain: Any
) -> None:
    fields = prepared.DESCRIPTOR.fields
    assert [(f.number, f.message_type) for f in fields] == [(1, plain.DESCRIPTOR)]


@pytest.mark.parametrize(
    ("prepared", "plain"),
    [
        (pb.PreparedChatCompletionResponse, pb.StreamChatCompletionResponse),
        (pb.PreparedCompletionResponse, pb.StreamCompletionResponse),
    ],
)
def test_each_prepared_response_has_the_plain_response_s_fields(prepared: Any, plain: Any) -> None:
    def shape(message: Any) -> list[tuple[object, ...]]:
        return [
            (
                f.number,
                f.name,
                f.type,
                f.message_type,
                f.containing_oneof and f.containing_oneof.name,
            )
            for f in message.DESCRIPTOR.fields
        ]

    assert shape(prepared) == shape(plain)
    sent = prepared(summary=pb.Summary(model="m", usage=pb.Usage(completion_tokens=3)))
    assert plain.FromString(sent.SerializeToString()).summary == sent.summary
