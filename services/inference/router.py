"""Which model serves a request, in order: the one asked for, then the caller's
`fallback_models`, then each of those models' configured `fallbacks`.

The next model is tried only when the previous one failed before it produced
anything, and only for failures another model may not share: unavailable
(no healthy upstream, upstream down, model busy) or rate limited. A request's
own faults (bad parameters, unknown model) and timeouts end it at once.

A request with image or audio parts goes only to models whose `capabilities`
take them: the others, the one asked for included, are skipped; when none is
left it is refused with a 400 naming the part and the model.

A caller limited to some models (an API key's list, `allowed_models`) never
reaches another one: the models it names must be in its list, and configured
fallbacks outside it are skipped.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, Callable, Collection
from dataclasses import dataclass

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
    ImageInput,
    Routed,
)
from services.inference.registry import ModelRegistry, ServedModel

log = logging.getLogger(__name__)

FALLBACK_KINDS = frozenset({Kind.UNAVAILABLE, Kind.RESOURCE_EXHAUSTED})


@dataclass(frozen=True)
class Chain:
    """The models to try, in order, each once; `withheld`: configured fallbacks
    skipped because the caller may not use them."""

    models: list[ServedModel]
    withheld: int = 0


def may_use(allowed: Collection[str], served: ServedModel) -> bool:
    """Whether a caller limited to `allowed` (empty: no limit) may use the model,
    known by its name or any alias."""
    return not allowed or any(i in allowed for i in (served.spec.name, *served.spec.aliases))


def candidates(
    registry: ModelRegistry,
    model: str,
    fallbacks: tuple[str, ...],
    operation: str,
    allowed: Collection[str] = (),
    configured: bool = True,
) -> Chain:
    """The chain for a request; PERMISSION_DENIED if it names a model outside `allowed`.
    `configured` False: the models it names only, none of their configured fallbacks."""
    ordered: list[ServedModel] = []
    seen: set[str] = set()
    withheld: set[str] = set()

    def add(served: ServedModel) -> None:
        if served.spec.name not in seen:
            seen.add(served.spec.name)
            ordered.append(served)

    for position, asked in enumerate((model, *fallbacks)):
        param = "model" if position == 0 else "models"
        served = registry.resolve_for(asked, operation, param=param)
        if not may_use(allowed, served):
            raise not_allowed(asked, param)
        add(served)
    position = 0 if configured else len(ordered)
    while position < len(ordered):  # then configured fallbacks, breadth first
        for name in ordered[position].spec.fallbacks:
            served = registry.resolve(name)
            if operation not in served.spec.operations or served.spec.name in seen:
                continue
            if may_use(allowed, served):
                add(served)
            else:
                withheld.add(served.spec.name)
        position += 1
    return Chain(ordered, len(withheld))


def capable(chain: Chain, request: ChatRequest) -> Chain:
    """The chain without the models that cannot take the request's parts."""
    needs = request.media_needs
    if not needs:
        return chain
    kept = [m for m in chain.models if all(n.capability in m.spec.capabilities for n in needs)]
    if kept:
        return Chain(kept, chain.withheld)
    first = chain.models[0]
    need = next(n for n in needs if n.capability not in first.spec.capabilities)
    part = need.part
    what = (
        f"File '{part.filename}' in {need.param} is an image (it would go as an image_url part)"
        if isinstance(part, ImageInput) and part.filename
        else f"{need.param} is {'an image' if need.capability == 'vision' else 'audio'}"
    )
    others = " (nor does any fallback)" if len(chain.models) > 1 else ""
    raise ServiceError(
        Kind.INVALID_ARGUMENT,
        "UNSUPPORTED_CONTENT_TYPE",
        f"{what}, but model '{request.model}' does not take "
        f"{'images' if need.capability == 'vision' else 'audio input'}{others}: it has no "
        f"'{need.capability}' capability.",
        param=need.param,
    )


def not_allowed(model: str, param: str) -> ServiceError:
    return ServiceError(
        Kind.PERMISSION_DENIED,
        "MODEL_NOT_ALLOWED",
        f"This API key may not use the model '{model}'.",
        param=param,
    )


def exhausted(model: str, chain: Chain, failure: ServiceError) -> ServiceError:
    """What the caller hears when every model it may use failed: that failure,
    or, when fallbacks it may not use were skipped, that it may go no further
    (without naming models its key does not list)."""
    if not chain.withheld:
        return failure
    return ServiceError(
        Kind.PERMISSION_DENIED,
        "MODEL_NOT_ALLOWED",
        f"The model '{model}' cannot serve now ({failure.message}), and the fallbacks "
        "configured for it are models this API key may not use.",
        param="model",
    )


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
            chain = candidates(
                registry,
                request.model,
                request.fallback_models,
                "chat",
                request.allowed_models,
                request.configured_fallbacks,
            )
            if isinstance(request, ChatRequest):
                chain = capable(chain, request)
            failure: ServiceError | None = None
            for served in chain.models:
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
            raise exhausted(request.model, chain, failure)

    async def embed(self, request: EmbedRequest) -> tuple[str, Embeddings]:
        """The model that served, and its embeddings."""
        with self.catalog.lease() as registry:
            chain = candidates(
                registry,
                request.model,
                request.fallback_models,
                "embeddings",
                request.allowed_models,
                request.configured_fallbacks,
            )
            failure: ServiceError | None = None
            for served in chain.models:
                assert served.embedder is not None
                try:
                    return served.spec.name, await served.embedder.embed(request)
                except ServiceError as error:
                    if error.kind not in FALLBACK_KINDS:
                        raise
                    failure = _note(error, served)
            assert failure is not None
            raise exhausted(request.model, chain, failure)


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
