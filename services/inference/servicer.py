"""InferenceService: protobuf <-> the model registry, nothing more."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import grpc
from aqueduct.inference.v1 import inference_pb2 as pb
from aqueduct.inference.v1 import inference_pb2_grpc

from core import tracing
from core.errors import Kind, ServiceError
from core.estimates import (
    chat_output_tokens,
    completion_output_tokens,
    estimate_completion_input_tokens,
    estimate_embedding_tokens,
    estimate_input_tokens,
)
from core.request_id import REQUEST_ID
from services.common.key_scope import CALLER
from services.inference import convert
from services.inference.catalog import Catalog
from services.inference.generation import Event, Finish, Routed
from services.inference.metering import Meter, Metering
from services.inference.router import Router


def idle_call_closed() -> ServiceError:
    """A fresh error each time: a raised instance keeps its traceback's frames."""
    return ServiceError(
        Kind.UNAVAILABLE,
        "IDLE_CALL_CLOSED",
        "This prepared call waited too long or the service is shutting down; "
        "the request was not read. Send it on another call.",
    )


# A prepared call answers with its own message types, which have the plain
# call's fields: the same code writes both.
ChatResponse = type[pb.StreamChatCompletionResponse] | type[pb.PreparedChatCompletionResponse]
CompletionResponse = type[pb.StreamCompletionResponse] | type[pb.PreparedCompletionResponse]
# The unary methods answer with one message: the whole answer.
WholeResponse = type[pb.ChatCompletionResponse] | type[pb.CompletionResponse]
Answer = pb.ChatCompletionResponse | pb.CompletionResponse


async def write_stream(
    events: AsyncGenerator[Event | Routed, None],
    response: ChatResponse | CompletionResponse,
    model: str,
    context: grpc.aio.ServicerContext[Any, Any],
    meter: Meter | None = None,
) -> None:
    """Write a generation's events as stream messages of type `response`.

    A coroutine that writes, not an async generator: when the call is
    cancelled (client gone, shutdown) the CancelledError lands inside the
    `aclosing` block, so the backend stream is closed at once and stops its
    generation or upstream request. A suspended generator would not be.
    `meter`, for a metered caller, learns the first token and the final counts.
    """
    served, provider, first = model, "", True
    async with contextlib.aclosing(events) as stream:
        async for event in stream:
            if isinstance(event, list):
                batch = pb.DeltaBatch(
                    deltas=[convert.delta_message(d) for d in event],
                    model=served if first else "",
                    provider=provider if first else "",
                )
                if first and meter is not None:
                    meter.first_token()
                first = False
                await context.write(response(deltas=batch))
            elif isinstance(event, Routed):
                served, provider = event.model, event.provider
            elif isinstance(event, Finish):
                if meter is not None:
                    meter.finished(event.prompt_tokens, event.completion_tokens, served)
                await context.write(
                    response(summary=convert.summary_message(event, served, provider))
                )
                return


async def collect_answer(
    events: AsyncGenerator[Event | Routed, None],
    response: WholeResponse,
    model: str,
    meter: Meter | None = None,
) -> Answer:
    """A generation's events as one message of type `response`: every delta in one
    batch, and the summary (the unary methods). Closed as write_stream's are."""
    served, provider = model, ""
    deltas: list[pb.Delta] = []
    async with contextlib.aclosing(events) as stream:
        async for event in stream:
            if isinstance(event, list):
                if not deltas and meter is not None:
                    meter.first_token()
                deltas.extend(convert.delta_message(d) for d in event)
            elif isinstance(event, Routed):
                served, provider = event.model, event.provider
            elif isinstance(event, Finish):
                if meter is not None:
                    meter.finished(event.prompt_tokens, event.completion_tokens, served)
                summary = convert.summary_message(event, served, provider)
                if not deltas:  # as a stream without text: only the summary
                    return response(summary=summary)
                return response(
                    deltas=pb.DeltaBatch(deltas=deltas, model=served, provider=provider),
                    summary=summary,
                )
    raise ServiceError(
        Kind.INTERNAL, "INCOMPLETE_ANSWER", "The generation ended without a summary."
    )


SERVICE = pb.DESCRIPTOR.services_by_name["InferenceService"].full_name
# The method a response type answers: a metered call's ledger `route`.
METHOD_OF: dict[ChatResponse | CompletionResponse | WholeResponse, str] = {
    pb.StreamChatCompletionResponse: "StreamChatCompletion",
    pb.PreparedChatCompletionResponse: "PreparedChatCompletion",
    pb.ChatCompletionResponse: "ChatCompletion",
    pb.StreamCompletionResponse: "StreamCompletion",
    pb.PreparedCompletionResponse: "PreparedCompletion",
    pb.CompletionResponse: "Completion",
}


def scope_models(request: Any) -> None:
    """A key-bearing internal caller uses its key's models, not the ones it sent."""
    caller = CALLER.get()
    if caller is not None:
        del request.allowed_models[:]
        request.allowed_models.extend(caller.allowed_models)


def model_visible(model_id: str) -> bool:
    caller = CALLER.get()
    return caller is None or not caller.allowed_models or model_id in caller.allowed_models


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(
        self, catalog: Catalog, idle_call_s: float, metering: Metering | None = None
    ) -> None:
        self.catalog = catalog
        # Limits and ledger rows for key-bearing internal callers (None: no such
        # callers, without mTLS); the edge meters its own clients.
        self.metering = metering
        self.router = Router(catalog)
        self.idle_call_s = idle_call_s
        self._idle_calls: set[asyncio.Task[Any]] = set()
        self._closing = False

    @property
    def idle_calls(self) -> int:
        """Prepared calls waiting for their request now."""
        return len(self._idle_calls)

    def close_idle_calls(self) -> None:
        """At shutdown: end every prepared call still waiting for its request,
        and any opened from now on, so that the server's grace period waits
        only for real work."""
        self._closing = True
        for task in self._idle_calls:
            task.cancel()

    async def _first_request(self, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        """A prepared call's request; None if the client closed it unused."""
        if self._closing:
            raise idle_call_closed()
        task = asyncio.current_task()
        assert task is not None
        self._idle_calls.add(task)
        try:
            async with asyncio.timeout(self.idle_call_s):
                request = await context.read()
        except TimeoutError:
            raise idle_call_closed() from None
        except asyncio.CancelledError:
            if not self._closing:
                raise  # the client cancelled the call: nobody to answer
            raise idle_call_closed() from None
        finally:
            self._idle_calls.discard(task)
        if request is grpc.aio.EOF:
            return None
        REQUEST_ID.set(request.request.request_id)  # a prepared call learns it only now
        return request

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(
            models=[
                convert.model_message(model_id, m)
                for m in self.catalog.current.models
                for model_id in (m.spec.name, *m.spec.aliases)
                if model_visible(model_id)
            ]
        )

    async def GetModel(
        self, request: pb.GetModelRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetModelResponse:
        if not model_visible(request.id):
            raise ServiceError(
                Kind.PERMISSION_DENIED,
                "MODEL_NOT_ALLOWED",
                f"This API key may not use the model '{request.id}'.",
                param="id",
            )
        served = self.catalog.current.resolve(request.id, param="id")
        return pb.GetModelResponse(model=convert.model_message(request.id, served))

    async def CreateEmbeddings(
        self, request: pb.CreateEmbeddingsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CreateEmbeddingsResponse:
        scope_models(request)
        caller = CALLER.get()
        if caller is None or self.metering is None:
            served, result = await self.router.embed(convert.embed_request(request))
        else:
            tokens = estimate_embedding_tokens(request)
            route = f"{SERVICE}/CreateEmbeddings"
            async with self.metering.metered(
                caller, route, request.model, tokens, 0, stream=False
            ) as meter:
                served, result = await self.router.embed(convert.embed_request(request))
                meter.finished(result.prompt_tokens, 0, served)
        return pb.CreateEmbeddingsResponse(
            embeddings=[pb.Embedding(index=i, values=row) for i, row in enumerate(result.vectors)],
            usage=pb.Usage(prompt_tokens=result.prompt_tokens),
            model=served,
        )

    async def StreamChatCompletion(  # type: ignore[override]  # writes, does not yield
        self, request: pb.StreamChatCompletionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        await self._chat(request, pb.StreamChatCompletionResponse, context)

    async def StreamCompletion(  # type: ignore[override]  # writes, does not yield
        self, request: pb.StreamCompletionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        await self._completion(request, pb.StreamCompletionResponse, context)

    async def PreparedChatCompletion(  # type: ignore[override]  # writes, does not yield
        self,
        request_iterator: AsyncIterator[pb.PreparedChatCompletionRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        prepared = await self._first_request(context)
        if prepared is not None:
            with tracing.remote(f"{SERVICE}/PreparedChatCompletion", prepared.request.traceparent):
                await self._chat(prepared.request, pb.PreparedChatCompletionResponse, context)

    async def PreparedCompletion(  # type: ignore[override]  # writes, does not yield
        self,
        request_iterator: AsyncIterator[pb.PreparedCompletionRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        prepared = await self._first_request(context)
        if prepared is not None:
            with tracing.remote(f"{SERVICE}/PreparedCompletion", prepared.request.traceparent):
                await self._completion(prepared.request, pb.PreparedCompletionResponse, context)

    async def ChatCompletion(
        self, request: pb.ChatCompletionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ChatCompletionResponse:
        answer = await self._chat(request.request, pb.ChatCompletionResponse, context)
        assert isinstance(answer, pb.ChatCompletionResponse)
        return answer

    async def Completion(
        self, request: pb.CompletionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CompletionResponse:
        answer = await self._completion(request.request, pb.CompletionResponse, context)
        assert isinstance(answer, pb.CompletionResponse)
        return answer

    async def _chat(
        self,
        request: pb.StreamChatCompletionRequest,
        response: ChatResponse | type[pb.ChatCompletionResponse],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> Answer | None:
        scope_models(request)
        chat = convert.chat_request(request, whole=response is pb.ChatCompletionResponse)
        return await self._generate(
            lambda: self.router.stream_chat(chat),
            response,
            request.model,
            context,
            lambda: (estimate_input_tokens(request), chat_output_tokens(request)),
        )

    async def _completion(
        self,
        request: pb.StreamCompletionRequest,
        response: CompletionResponse | type[pb.CompletionResponse],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> Answer | None:
        scope_models(request)
        completion = convert.completion_request(request, whole=response is pb.CompletionResponse)
        return await self._generate(
            lambda: self.router.stream_completion(completion),
            response,
            request.model,
            context,
            lambda: (estimate_completion_input_tokens(request), completion_output_tokens(request)),
        )

    async def _generate(
        self,
        events: Callable[[], AsyncGenerator[Event | Routed, None]],
        response: ChatResponse | CompletionResponse | WholeResponse,
        model: str,
        context: grpc.aio.ServicerContext[Any, Any],
        estimate: Callable[[], tuple[int, int | None]],
    ) -> Answer | None:
        """Write a generation's stream, or return it whole (the unary methods); a
        key-bearing internal caller's is metered (its key's limits reserved with
        the `estimate`, its ledger row settled)."""
        caller = CALLER.get()
        if caller is None or self.metering is None:
            return await _deliver(events(), response, model, context, None)
        route = f"{SERVICE}/{METHOD_OF[response]}"
        async with self.metering.metered(caller, route, model, *estimate()) as meter:
            return await _deliver(events(), response, model, context, meter)


async def _deliver(
    events: AsyncGenerator[Event | Routed, None],
    response: ChatResponse | CompletionResponse | WholeResponse,
    model: str,
    context: grpc.aio.ServicerContext[Any, Any],
    meter: Meter | None,
) -> Answer | None:
    if response is pb.ChatCompletionResponse or response is pb.CompletionResponse:
        return await collect_answer(events, response, model, meter)
    await write_stream(events, response, model, context, meter)
    return None
