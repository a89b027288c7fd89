"""Which model serves a request, in order: the one asked for, then the caller's
`fallback_models`, then each of those models' configured `fallbacks`.

The next model is tried only when the previous one failed before it produced
anything, and only for failures another model may not share: unavailable
(no healthy upstream, upstream down, model busy) or rate limited. A request's
own faults (bad parameters, unknown model) and timeouts end it at once.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, Callable

from core.errors import Kind, ServiceError
from services.inference import strict
from services.inference.catalog import Catalog
from services.inference.embedding import Embeddings, EmbedRequest
from services.inference.generation import (
    ChatBackend,
    ChatRequest,
    CompletionBackend,
    CompletionRequest,
    Event,
    Routed,
)
from services.inference.registry import ModelRegistry, ServedModel

log = logging.getLogger(__name__)

FALLBACK_KINDS = frozenset({Kind.UNAVAILABLE, Kind.RESOURCE_EXHAUSTED})


def candidates(
    registry: ModelRegistry, model: str, fallbacks: tuple[str, ...], operation: str
) -> list[ServedModel]:
    """The models to try, in order, each once."""
    ordered: list[ServedModel] = []
    seen: set[str] = set()

    def add(served: ServedModel) -> None:
        if served.spec.name not in seen:
            seen.add(served.spec.name)
            ordered.append(served)

    add(registry.resolve_for(model, operation))
    for fallback in fallbacks:
        add(registry.resolve_for(fallback, operation, param="models"))
    position = 0
    while position < len(ordered):  # then configured fallbacks, breadth first
        for name in ordered[position].spec.fallbacks:
            served = registry.resolve(name)
            if operation in served.spec.capabilities:
                add(served)
        position += 1
    return ordered


class Router:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def stream_chat(self, request: ChatRequest) -> AsyncGenerator[Event | Routed, None]:
        """`Routed(model)` once a model has produced its first event, then its events."""
        return strict.checked(
            self._stream(request, lambda backend: backend.stream_chat(request)),
            request.sampling.response_format,
        )

    def stream_completion(self, request: CompletionRequest) -> AsyncGenerator[Event | Routed, None]:
        """As `stream_chat`, for a text completion."""
        return strict.checked(
            self._stream(request, lambda backend: _completion_backend(backend, request)),
            request.sampling.response_format,
        )

    async def _stream(
        self,
        request: ChatRequest | CompletionRequest,
        open_stream: Callable[[ChatBackend], AsyncGenerator[Event, None]],
    ) -> AsyncGenerator[Event | Routed, None]:
        with self.catalog.lease() as registry:
            chain = candidates(registry, request.model, request.fallback_models, "chat")
            failure: ServiceError | None = None
            for served in chain:
                assert served.chat is not None
                async with contextlib.aclosing(open_stream(served.chat)) as events:
                    try:
                        first = await anext(events)
                    except ServiceError as error:
                        if error.kind not in FALLBACK_KINDS:
                            raise
                        failure = _note(error, served)
                        continue
                    yield Routed(served.spec.name, served.spec.owned_by)
                    yield first
                    async for event in events:
                        yield event
                    return
            assert failure is not None
            raise failure

    async def embed(self, request: EmbedRequest) -> tuple[str, Embeddings]:
        """The model that served, and its embeddings."""
        with self.catalog.lease() as registry:
            chain = candidates(registry, request.model, request.fallback_models, "embeddings")
            failure: ServiceError | None = None
            for served in chain:
                assert served.embedder is not None
                try:
                    return served.spec.name, await served.embedder.embed(request)
                except ServiceError as error:
                    if error.kind not in FALLBACK_KINDS:
                        raise
                    failure = _note(error, served)
            assert failure is not None
            raise failure


def _completion_backend(
    backend: ChatBackend, request: CompletionRequest
) -> AsyncGenerator[Event, None]:
    if not isinstance(backend, CompletionBackend):
        raise ServiceError(
            Kind.INVALID_ARGUMENT,
            "COMPLETIONS_UNSUPPORTED",
            f"Model '{request.model}' does not serve text completions through this gateway; "
            "use /chat/completions.",
            param="model",
        )
    return backend.stream_completion(request)


def _note(error: ServiceError, served: ServedModel) -> ServiceError:
    log.warning(
        "model failed before answering; trying the next one",
        extra={"model": served.spec.name, "reason": error.reason},
    )
    return error
