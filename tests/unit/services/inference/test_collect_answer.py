"""The unary ChatCompletion/Completion answer: a generation's events as one message."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import pytest
from aqueduct.inference.v1 import inference_pb2 as pb

from core.errors import ServiceError
from services.inference.generation import Delta, Event, Finish, Routed
from services.inference.metering import Meter
from services.inference.servicer import collect_answer


def events(*items: Event | Routed) -> AsyncGenerator[Event | Routed, None]:
    async def generate() -> AsyncGenerator[Event | Routed, None]:
        for item in items:
            yield item

    return generate()


def collect(
    source: AsyncGenerator[Event | Routed, None], meter: Meter | None = None
) -> pb.ChatCompletionResponse:
    answer = asyncio.run(collect_answer(source, pb.ChatCompletionResponse, "asked", meter))
    assert isinstance(answer, pb.ChatCompletionResponse)
    return answer


def test_every_delta_in_one_batch_then_the_summary_with_the_model_that_served() -> None:
    meter = Meter(model="asked", route="ChatCompletion", stream=False, input_tokens=9)
    answer = collect(
        events(
            Routed("fallback", "acme"),
            [Delta(0, "Hel", tokens=1)],
            [Delta(0, "lo", tokens=1), Delta(1, "Hi", tokens=1)],
            Finish({0: "stop", 1: "length"}, prompt_tokens=7, completion_tokens=3),
        ),
        meter,
    )
    assert [(d.choice_index, d.content) for d in answer.deltas.deltas] == [
        (0, "Hel"),
        (0, "lo"),
        (1, "Hi"),
    ]
    assert (answer.deltas.model, answer.deltas.provider) == ("fallback", "acme")
    assert answer.summary.model == "fallback"
    assert (answer.summary.usage.prompt_tokens, answer.summary.usage.completion_tokens) == (7, 3)
    # A metered caller's ledger row gets the exact counts and the first token's time.
    assert meter.completed and (meter.input_tokens, meter.output_tokens) == (7, 3)
    assert meter.served == "fallback" and meter.first_token_at is not None


def test_a_generation_without_text_answers_with_the_summary_only() -> None:
    answer = collect(events(Finish({0: "stop"}, prompt_tokens=4, completion_tokens=0)))
    assert not answer.HasField("deltas")
    assert answer.summary.model == "asked"


def test_a_generation_that_ends_without_its_summary_is_an_error_not_half_an_answer() -> None:
    meter = Meter(model="asked", route="ChatCompletion", stream=False, input_tokens=9)
    with pytest.raises(ServiceError) as caught:
        collect(events([Delta(0, "cut")]), meter)
    assert caught.value.reason == "INCOMPLETE_ANSWER"
    assert not meter.completed  # settled as unfinished, with its estimate


def test_the_generation_is_closed_when_collecting_is_cancelled() -> None:
    closed = asyncio.Event()

    async def endless() -> AsyncGenerator[Event | Routed, None]:
        try:
            while True:
                yield [Delta(0, "x")]
                await asyncio.sleep(0.01)
        finally:
            closed.set()

    async def scenario() -> None:
        task = asyncio.create_task(collect_answer(endless(), pb.ChatCompletionResponse, "m"))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert closed.is_set()  # the backend stops generating for a caller gone

    asyncio.run(scenario())
