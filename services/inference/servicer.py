"""InferenceService: protobuf <-> the model registry, nothing more."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import grpc
from aqueduct.inference.v1 import inference_pb2 as pb
from aqueduct.inference.v1 import inference_pb2_grpc

from services.common.errors import ServiceError
from services.common.status import abort
from services.inference.catalog import Catalog
from services.inference.embedding import EmbeddingInput, EmbedRequest
from services.inference.generation import ChatRequest, Finish, Message, Routed, Sampling
from services.inference.registry import ServedModel
from services.inference.router import Router

log = logging.getLogger(__name__)

FINISH_REASONS = {
    "stop": pb.FINISH_REASON_STOP,
    "length": pb.FINISH_REASON_LENGTH,
    "content_filter": pb.FINISH_REASON_CONTENT_FILTER,
}


def chat_request(message: pb.StreamChatCompletionRequest) -> ChatRequest:
    s = message.sampling
    return ChatRequest(
        model=message.model,
        messages=tuple(Message(m.role, m.content, m.name) for m in message.messages),
        sampling=Sampling(
            max_tokens=s.max_tokens if s.HasField("max_tokens") else None,
            temperature=s.temperature if s.HasField("temperature") else None,
            top_p=s.top_p if s.HasField("top_p") else None,
            stops=tuple(s.stops),
            seed=s.seed if s.HasField("seed") else None,
            presence_penalty=s.presence_penalty if s.HasField("presence_penalty") else None,
            frequency_penalty=s.frequency_penalty if s.HasField("frequency_penalty") else None,
        ),
        user=message.user,
        fallback_models=tuple(message.fallback_models),
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


def summary_message(finish: Finish, model: str) -> pb.StreamChatCompletionResponse:
    return pb.StreamChatCompletionResponse(
        summary=pb.Summary(
            choice_ends=[
                pb.ChoiceEnd(choice_index=i, finish_reason=FINISH_REASONS[r])
                for i, r in sorted(finish.finish_reasons.items())
            ],
            usage=pb.Usage(
                prompt_tokens=finish.prompt_tokens, completion_tokens=finish.completion_tokens
            ),
            model=model,
        )
    )


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.router = Router(catalog)

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
        # A coroutine that writes, not an async generator: when the call is
        # cancelled (client gone, shutdown) the CancelledError lands inside the
        # `aclosing` block, so the backend stream is closed at once and stops
        # its generation or upstream request. A suspended generator would not be.
        try:
            served, first = request.model, True
            async with contextlib.aclosing(
                self.router.stream_chat(chat_request(request))
            ) as events:
                async for event in events:
                    if isinstance(event, list):
                        batch = pb.DeltaBatch(
                            deltas=[
                                pb.Delta(choice_index=d.choice_index, content=d.text) for d in event
                            ],
                            model=served if first else "",
                        )
                        first = False
                        await context.write(pb.StreamChatCompletionResponse(deltas=batch))
                    elif isinstance(event, Routed):
                        served = event.model
                    elif isinstance(event, Finish):
                        await context.write(summary_message(event, served))
                        return
        except ServiceError as error:
            await abort(context, error)
