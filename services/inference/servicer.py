"""InferenceService: protobuf <-> the model registry, nothing more."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import grpc
from aqueduct.inference.v1 import inference_pb2 as pb
from aqueduct.inference.v1 import inference_pb2_grpc

from core.enum_names import FINISH_REASONS
from core.errors import Kind, ServiceError
from core.request_id import REQUEST_ID
from services.inference.catalog import Catalog
from services.inference.embedding import EmbeddingInput, EmbedRequest
from services.inference.generation import (
    ChatRequest,
    CompletionRequest,
    Delta,
    Event,
    Finish,
    Message,
    Prompt,
    ResponseFormat,
    Routed,
    Sampling,
    ToolCall,
)
from services.inference.registry import ServedModel
from services.inference.router import Router

log = logging.getLogger(__name__)


def idle_call_closed() -> ServiceError:
    """A fresh error each time: a raised instance keeps its traceback's frames."""
    return ServiceError(
        Kind.UNAVAILABLE,
        "IDLE_CALL_CLOSED",
        "This prepared call waited too long or the service is shutting down; "
        "the request was not read. Send it on another call.",
    )


RESPONSE_FORMATS = {
    pb.RESPONSE_FORMAT_TYPE_UNSPECIFIED: "text",
    pb.RESPONSE_FORMAT_TYPE_TEXT: "text",
    pb.RESPONSE_FORMAT_TYPE_JSON_OBJECT: "json_object",
    pb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA: "json_schema",
    pb.RESPONSE_FORMAT_TYPE_GRAMMAR: "grammar",
}


def sampling(s: pb.SamplingParams) -> Sampling:
    f = s.response_format
    if f.grammar_syntax not in ("", "gbnf"):
        raise ServiceError(
            Kind.INVALID_ARGUMENT,
            "UNSUPPORTED_GRAMMAR_SYNTAX",
            f"Grammar syntax '{f.grammar_syntax}' is not supported; use 'gbnf'.",
            param="response_format",
        )
    return Sampling(
        max_tokens=s.max_tokens if s.HasField("max_tokens") else None,
        temperature=s.temperature if s.HasField("temperature") else None,
        top_p=s.top_p if s.HasField("top_p") else None,
        stops=tuple(s.stops),
        seed=s.seed if s.HasField("seed") else None,
        presence_penalty=s.presence_penalty if s.HasField("presence_penalty") else None,
        frequency_penalty=s.frequency_penalty if s.HasField("frequency_penalty") else None,
        n=s.n if s.HasField("n") and s.n > 0 else 1,
        logprobs=s.logprobs,
        top_logprobs=s.top_logprobs,
        logit_bias=tuple(sorted(s.logit_bias.items())),
        response_format=ResponseFormat(
            type=RESPONSE_FORMATS.get(f.type, "text"),
            schema=f.json_schema,
            strict=f.strict,
            name=f.name,
            grammar=f.grammar,
        ),
    )


def chat_request(message: pb.StreamChatCompletionRequest) -> ChatRequest:
    return ChatRequest(
        model=message.model,
        messages=tuple(
            Message(
                m.role,
                m.content,
                m.name,
                tuple(ToolCall(c.id, c.name, c.arguments) for c in m.tool_calls),
                m.tool_call_id,
            )
            for m in message.messages
        ),
        sampling=sampling(message.sampling),
        user=message.user,
        fallback_models=tuple(message.fallback_models),
        tools_json=message.tools_json,
        tool_choice_json=message.tool_choice_json,
        parallel_tool_calls=(
            message.parallel_tool_calls if message.HasField("parallel_tool_calls") else None
        ),
    )


def completion_request(message: pb.StreamCompletionRequest) -> CompletionRequest:
    prompts: list[Prompt] = [
        p.text if p.WhichOneof("input") != "tokens" else tuple(p.tokens.ids)
        for p in message.prompts
    ]
    return CompletionRequest(
        model=message.model,
        prompts=tuple(prompts),
        sampling=sampling(message.sampling),
        suffix=message.suffix,
        echo=message.echo,
        best_of=message.best_of if message.HasField("best_of") else None,
        user=message.user,
        fallback_models=tuple(message.fallback_models),
    )


def delta_message(delta: Delta) -> pb.Delta:
    return pb.Delta(
        choice_index=delta.choice_index,
        content=delta.text,
        tokens=delta.tokens,
        logprobs=[
            pb.TokenLogprob(
                token=lp.token,
                logprob=lp.logprob,
                bytes=lp.bytes,
                top_logprobs=[
                    pb.TopLogprob(token=t.token, logprob=t.logprob, bytes=t.bytes) for t in lp.top
                ],
            )
            for lp in delta.logprobs
        ],
        tool_calls=[
            pb.ToolCallDelta(index=c.index, id=c.id, name=c.name, arguments=c.arguments)
            for c in delta.tool_calls
        ],
    )


def embed_request(message: pb.CreateEmbeddingsRequest) -> EmbedRequest:
    inputs: list[EmbeddingInput] = [
        i.text if i.WhichOneof("input") != "tokens" else tuple(i.tokens.ids) for i in message.inputs
    ]
    return EmbedRequest(
        model=message.model,
        inputs=tuple(inputs),
        dimensions=message.dimensions if message.HasField("dimensions") else None,
        user=message.user,
        fallback_models=tuple(message.fallback_models),
        input_type=message.input_type,
    )


def model_message(model_id: str, served: ServedModel) -> pb.Model:
    return pb.Model(
        id=model_id, owned_by=served.spec.owned_by, created=served.created, root=served.spec.name
    )


def summary_message(finish: Finish, model: str, provider: str = "") -> pb.Summary:
    return pb.Summary(
        choice_ends=[
            pb.ChoiceEnd(choice_index=i, finish_reason=FINISH_REASONS.by_name[r])
            for i, r in sorted(finish.finish_reasons.items())
        ],
        usage=pb.Usage(
            prompt_tokens=finish.prompt_tokens, completion_tokens=finish.completion_tokens
        ),
        model=model,
        provider=provider,
    )


async def write_stream(
    events: AsyncGenerator[Event | Routed, None],
    response: type[pb.StreamChatCompletionResponse] | type[pb.StreamCompletionResponse],
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
                    deltas=[delta_message(d) for d in event],
                    model=served if first else "",
                    provider=provider if first else "",
                )
                first = False
                await context.write(response(deltas=batch))
            elif isinstance(event, Routed):
                served, provider = event.model, event.provider
            elif isinstance(event, Finish):
                await context.write(response(summary=summary_message(event, served, provider)))
                return


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
        REQUEST_ID.set(request.request_id)  # a prepared call learns it only now
        return request

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(
            models=[
                model_message(model_id, m)
                for m in self.catalog.current.models
                for model_id in (m.spec.name, *m.spec.aliases)
            ]
        )

    async def GetModel(
        self, request: pb.GetModelRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetModelResponse:
        served = self.catalog.current.resolve(request.id, param="id")
        return pb.GetModelResponse(model=model_message(request.id, served))

    async def CreateEmbeddings(
        self, request: pb.CreateEmbeddingsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CreateEmbeddingsResponse:
        served, result = await self.router.embed(embed_request(request))
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
        chat = chat_request(request)
        await write_stream(
            self.router.stream_chat(chat), pb.StreamChatCompletionResponse, request.model, context
        )

    async def StreamCompletion(  # type: ignore[override]  # writes, does not yield
        self, request: pb.StreamCompletionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        completion = completion_request(request)
        await write_stream(
            self.router.stream_completion(completion),
            pb.StreamCompletionResponse,
            request.model,
            context,
        )

    async def PreparedChatCompletion(  # type: ignore[override]  # writes, does not yield
        self,
        request_iterator: AsyncIterator[pb.StreamChatCompletionRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        request = await self._first_request(context)
        if request is not None:
            await self.StreamChatCompletion(request, context)

    async def PreparedCompletion(  # type: ignore[override]  # writes, does not yield
        self,
        request_iterator: AsyncIterator[pb.StreamCompletionRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        request = await self._first_request(context)
        if request is not None:
            await self.StreamCompletion(request, context)
