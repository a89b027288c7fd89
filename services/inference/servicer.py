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

from services.common.errors import Kind, ServiceError
from services.common.status import abort
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

IDLE_CALL_CLOSED = ServiceError(
    Kind.UNAVAILABLE,
    "IDLE_CALL_CLOSED",
    "This prepared call waited too long or the service is shutting down; "
    "the request was not read. Send it on another call.",
)

# A prepared call answers with its own message types, which have the plain
# call's fields: the same code writes both.
ChatResponse = type[pb.StreamChatCompletionResponse] | type[pb.PreparedChatCompletionResponse]
CompletionResponse = type[pb.StreamCompletionResponse] | type[pb.PreparedCompletionResponse]

FINISH_REASONS = {
    "tool_calls": pb.FINISH_REASON_TOOL_CALLS,
    "stop": pb.FINISH_REASON_STOP,
    "length": pb.FINISH_REASON_LENGTH,
    "content_filter": pb.FINISH_REASON_CONTENT_FILTER,
}


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
            pb.ChoiceEnd(choice_index=i, finish_reason=FINISH_REASONS[r])
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
    try:
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
    except ServiceError as error:
        await abort(context, error)


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
            await abort(context, IDLE_CALL_CLOSED)
        task = asyncio.current_task()
        assert task is not None
        self._idle_calls.add(task)
        try:
            async with asyncio.timeout(self.idle_call_s):
                request = await context.read()
        except TimeoutError:
            await abort(context, IDLE_CALL_CLOSED)
        except asyncio.CancelledError:
            if not self._closing:
                raise  # the client cancelled the call: nobody to answer
            await abort(context, IDLE_CALL_CLOSED)
        finally:
            self._idle_calls.discard(task)
        return None if request is grpc.aio.EOF else request

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
        try:
            served = self.catalog.current.resolve(request.id, param="id")
        except ServiceError as error:
            await abort(context, error)
        return pb.GetModelResponse(model=model_message(request.id, served))

    async def CreateEmbeddings(
        self, request: pb.CreateEmbeddingsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CreateEmbeddingsResponse:
        try:
            served, result = await self.router.embed(embed_request(request))
        except ServiceError as error:
            await abort(context, error)
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
            await self._chat(prepared.request, pb.PreparedChatCompletionResponse, context)

    async def PreparedCompletion(  # type: ignore[override]  # writes, does not yield
        self,
        request_iterator: AsyncIterator[pb.PreparedCompletionRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        prepared = await self._first_request(context)
        if prepared is not None:
            await self._completion(prepared.request, pb.PreparedCompletionResponse, context)

    async def _chat(
        self,
        request: pb.StreamChatCompletionRequest,
        response: ChatResponse,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        try:
            chat = chat_request(request)
        except ServiceError as error:
            await abort(context, error)
        await write_stream(self.router.stream_chat(chat), response, request.model, context)

    async def _completion(
        self,
        request: pb.StreamCompletionRequest,
        response: CompletionResponse,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        try:
            completion = completion_request(request)
        except ServiceError as error:
            await abort(context, error)
        await write_stream(
            self.router.stream_completion(completion), response, request.model, context
        )
