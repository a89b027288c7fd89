"""InferenceService: protobuf <-> the model registry, nothing more."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import grpc
from aqueduct.inference.v1 import inference_pb2 as pb
from aqueduct.inference.v1 import inference_pb2_grpc

from core import tracing
from core.errors import Kind, ServiceError
from core.request_id import REQUEST_ID
from services.inference import convert
from services.inference.catalog import Catalog
from services.inference.generation import Event, Finish, Routed
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


async def write_stream(
    events: AsyncGenerator[Event | Routed, None],
    response: ChatResponse | CompletionResponse,
    model: str,
    context: grpc.aio.ServicerContext[Any, Any],
) -> None:
    """Write a generation's events as stream messages of type `response`.

    A coroutine that writes, not an async generator: when the call is
    cancelled (client gone, shutdown) the CancelledError lands inside the
    `aclosing` block, so the backend stream is closed at once and stops its
    generation or upstream request. A suspended generator would not be.
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
                first = False
                await context.write(response(deltas=batch))
            elif isinstance(event, Routed):
                served, provider = event.model, event.provider
            elif isinstance(event, Finish):
                await context.write(
                    response(summary=convert.summary_message(event, served, provider))
                )
                return


SERVICE = pb.DESCRIPTOR.services_by_name["InferenceService"].full_name


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self, catalog: Catalog, idle_call_s: float) -> None:
        self.catalog = catalog
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
            ]
        )

    async def GetModel(
        self, request: pb.GetModelRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetModelResponse:
        served = self.catalog.current.resolve(request.id, param="id")
        return pb.GetModelResponse(model=convert.model_message(request.id, served))

    async def CreateEmbeddings(
        self, request: pb.CreateEmbeddingsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CreateEmbeddingsResponse:
        served, result = await self.router.embed(convert.embed_request(request))
        return pb.CreateEmbeddingsResponse(
            embeddings=[
                pb.Embedding(index=i, values=row.tolist()) for i, row in enumerate(result.vectors)
            ],
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

    async def _chat(
        self,
        request: pb.StreamChatCompletionRequest,
        response: ChatResponse,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        chat = convert.chat_request(request)
        await write_stream(self.router.stream_chat(chat), response, request.model, context)

    async def _completion(
        self,
        request: pb.StreamCompletionRequest,
        response: CompletionResponse,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        completion = convert.completion_request(request)
        await write_stream(
            self.router.stream_completion(completion), response, request.model, context
        )
