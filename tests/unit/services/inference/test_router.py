"""Which models a request tries, in what order, and when it moves on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from pathlib import Path

import pytest

from core.errors import Kind, ServiceError
from services.inference.config import Settings
from services.inference.generation import (
    ChatRequest,
    Delta,
    Event,
    Finish,
    ImageInput,
    Message,
    Routed,
)
from services.inference.models_file import ModelSpec
from services.inference.registry import ModelRegistry, ServedModel
from services.inference.router import Router, candidates


class FakeChat:
    def __init__(self, error: ServiceError | None = None, fail_after_first: bool = False) -> None:
        self.error = error
        self.fail_after_first = fail_after_first
        self.calls = 0
        self.closed = 0

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def stream_chat(self, request: ChatRequest) -> AsyncGenerator[Event, None]:
        self.calls += 1
        try:
            if self.error and not self.fail_after_first:
                raise self.error
            yield [Delta(0, "hi")]
            if self.error:
                raise self.error
            yield Finish({0: "stop"}, 1, 1)
        finally:
            self.closed += 1


def served(
    name: str, backend: str = "openai", fallbacks: tuple[str, ...] = (), chat: object = None
) -> ServedModel:
    spec = ModelSpec(name=name, backend=backend, fallbacks=fallbacks)
    return ServedModel(spec, chat or FakeChat(), 0, chat=chat or FakeChat())  # type: ignore[arg-type]


def registry(*models: ServedModel) -> ModelRegistry:
    return ModelRegistry(list(models))


def test_order_is_model_then_request_list_then_configured_breadth_first() -> None:
    reg = registry(
        served("a", fallbacks=("c",)),
        served("b", fallbacks=("d", "a")),
        served("c"),
        served("d"),
        served("e", backend="local-embedding"),
    )
    names = [m.spec.name for m in candidates(reg, "a", ("b", "a"), "chat").models]
    assert names == ["a", "b", "c", "d"]


def test_without_configured_fallbacks_only_the_named_models_are_tried() -> None:
    """What a worker forwarding a local model asks of the worker that runs it."""
    reg = registry(served("a", fallbacks=("c",)), served("b"), served("c"))
    names = [m.spec.name for m in candidates(reg, "a", ("b",), "chat", configured=False).models]
    assert names == ["a", "b"]


def test_unknown_or_incapable_request_models_are_refused_with_param() -> None:
    reg = registry(served("a"), served("e", backend="local-embedding"))
    with pytest.raises(ServiceError) as unknown:
        candidates(reg, "a", ("zzz",), "chat")
    assert (unknown.value.kind, unknown.value.param) == (Kind.NOT_FOUND, "models")
    with pytest.raises(ServiceError) as incapable:
        candidates(reg, "e", (), "chat")
    assert incapable.value.reason == "OPERATION_NOT_SUPPORTED"


class OneCatalog:
    """The part of Catalog the router uses."""

    def __init__(self, reg: ModelRegistry) -> None:
        self.current = reg

    def lease(self):  # type: ignore[no-untyped-def]
        import contextlib

        return contextlib.nullcontext(self.current)


def run(router: Router, request: ChatRequest) -> list[object]:
    async def collect() -> list[object]:
        return [event async for event in router.stream_chat(request)]

    return asyncio.run(collect())


UNAVAILABLE = ServiceError(Kind.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", "down")
REQUEST = ChatRequest("a", (Message("user", "hi"),), fallback_models=("b",))


def test_falls_back_on_unavailable_before_anything_was_produced() -> None:
    down, up = FakeChat(UNAVAILABLE), FakeChat()
    reg = registry(served("a", chat=down), served("b", chat=up))
    events = run(Router(OneCatalog(reg)), REQUEST)  # type: ignore[arg-type]
    assert events[0] == Routed("b", "aqueduct")  # the served model and its owned_by
    assert isinstance(events[-1], Finish)
    assert (down.calls, down.closed, up.calls) == (1, 1, 1)


def test_never_falls_back_once_text_was_produced_or_for_request_errors() -> None:
    broken, spare = FakeChat(UNAVAILABLE, fail_after_first=True), FakeChat()
    reg = registry(served("a", chat=broken), served("b", chat=spare))
    with pytest.raises(ServiceError):
        run(Router(OneCatalog(reg)), REQUEST)  # type: ignore[arg-type]
    assert spare.calls == 0 and broken.closed == 1
    bad = FakeChat(ServiceError(Kind.INVALID_ARGUMENT, "X", "bad"))
    reg = registry(served("a", chat=bad), served("b", chat=spare))
    with pytest.raises(ServiceError):
        run(Router(OneCatalog(reg)), REQUEST)  # type: ignore[arg-type]
    assert spare.calls == 0


def test_when_every_model_fails_the_last_failure_is_raised() -> None:
    last = ServiceError(Kind.RESOURCE_EXHAUSTED, "UPSTREAM_RATE_LIMITED", "slow down")
    reg = registry(served("a", chat=FakeChat(UNAVAILABLE)), served("b", chat=FakeChat(last)))
    with pytest.raises(ServiceError) as caught:
        run(Router(OneCatalog(reg)), REQUEST)  # type: ignore[arg-type]
    assert caught.value is last


def test_catalog_reload_reuses_unchanged_backends_and_closes_replaced_ones_when_idle(
    tmp_path: Path,
) -> None:
    from services.inference.catalog import Catalog
    from services.inference.openai_backend import OpenAIBackend

    config = tmp_path / "models.yaml"
    two = (
        "models:\n  - {name: keep, backend: openai, upstreams: [{url: 'http://127.0.0.1:9/v1'}]}\n"
    )
    config.write_text(
        two + "  - {name: old, backend: openai, upstreams: [{url: 'http://127.0.0.1:9/v1'}]}\n"
    )

    async def scenario() -> None:
        catalog = Catalog(Settings(address="127.0.0.1:0", models_config=config))
        await catalog.start()
        keep = catalog.current.resolve("keep").backend
        old = catalog.current.resolve("old").backend
        assert isinstance(old, OpenAIBackend)
        upstream = old.balancer.replicas[0].target
        with catalog.lease() as leased:
            config.write_text(
                two
                + "  - {name: new, backend: openai, upstreams: [{url: 'http://127.0.0.1:9/v1'}]}\n"
            )
            assert await catalog.reload()
            assert catalog.current.resolve("keep").backend is keep  # same pool, same health
            assert leased.resolve("old").backend is old  # the request keeps what it started with
            await asyncio.sleep(0)
            assert not upstream.closed
        await asyncio.sleep(0.01)
        assert upstream.closed  # closed once its last request was done
        config.write_text("models: [{name: x, backend: nope}]\n")
        assert not await catalog.reload()
        assert catalog.current.resolve("new")  # unchanged
        await catalog.close()

    asyncio.run(scenario())


# -- a caller limited to some models (an API key's list) ---------------------------


def test_configured_fallbacks_outside_the_callers_models_are_skipped() -> None:
    reg = registry(
        served("down", fallbacks=("secret", "open")),
        served("secret"),
        served("open"),
    )
    chain = candidates(reg, "down", (), "chat", allowed=("down", "open"))
    assert [m.spec.name for m in chain.models] == ["down", "open"]
    assert chain.withheld == 1
    unlimited = candidates(reg, "down", (), "chat")
    assert [m.spec.name for m in unlimited.models] == ["down", "secret", "open"]


def test_a_model_is_allowed_by_any_of_its_ids() -> None:
    aliased = ServedModel(
        ModelSpec(name="secret", backend="openai", aliases=("nickname",)),
        FakeChat(),  # type: ignore[arg-type]
        0,
        chat=FakeChat(),
    )
    reg = registry(served("down", fallbacks=("secret",)), aliased)
    chain = candidates(reg, "down", (), "chat", allowed=("down", "nickname"))
    assert [m.spec.name for m in chain.models] == ["down", "secret"]


def test_a_named_model_outside_the_callers_models_is_refused() -> None:
    reg = registry(served("a"), served("b"))
    with pytest.raises(ServiceError) as asked:
        candidates(reg, "b", (), "chat", allowed=("a",))
    assert (asked.value.kind, asked.value.reason, asked.value.param) == (
        Kind.PERMISSION_DENIED,
        "MODEL_NOT_ALLOWED",
        "model",
    )
    assert "'b'" in asked.value.message
    with pytest.raises(ServiceError) as listed:
        candidates(reg, "a", ("b",), "chat", allowed=("a",))
    assert (listed.value.reason, listed.value.param) == ("MODEL_NOT_ALLOWED", "models")


def test_a_down_model_never_falls_back_to_a_model_the_caller_may_not_use() -> None:
    """The issue's case: a key allowed only `down`, whose fallback is `secret`."""
    down, secret = FakeChat(UNAVAILABLE), FakeChat()
    reg = registry(served("down", fallbacks=("secret",), chat=down), served("secret", chat=secret))
    request = ChatRequest("down", (Message("user", "hi"),), allowed_models=("down",))
    with pytest.raises(ServiceError) as caught:
        run(Router(OneCatalog(reg)), request)  # type: ignore[arg-type]
    assert secret.calls == 0 and down.calls == 1
    assert (caught.value.kind, caught.value.reason, caught.value.param) == (
        Kind.PERMISSION_DENIED,
        "MODEL_NOT_ALLOWED",
        "model",
    )
    assert "'down'" in caught.value.message and "secret" not in caught.value.message
    # Without a limit, the same request is served by the fallback.
    events = run(Router(OneCatalog(reg)), ChatRequest("down", (Message("user", "hi"),)))  # type: ignore[arg-type]
    assert events[0] == Routed("secret", "aqueduct") and secret.calls == 1


def test_embeddings_skip_fallbacks_outside_the_callers_models() -> None:
    from services.inference.embedding import EmbedRequest

    class FakeEmbedder:
        def __init__(self) -> None:
            self.calls = 0

        async def embed(self, request: EmbedRequest) -> object:
            self.calls += 1
            raise UNAVAILABLE

    down, secret = FakeEmbedder(), FakeEmbedder()
    reg = registry(
        ServedModel(ModelSpec("down", "openai", fallbacks=("secret",)), down, 0, embedder=down),  # type: ignore[arg-type]
        ServedModel(ModelSpec("secret", "openai"), secret, 0, embedder=secret),  # type: ignore[arg-type]
    )
    with pytest.raises(ServiceError) as caught:
        asyncio.run(
            Router(OneCatalog(reg)).embed(EmbedRequest("down", ("x",), allowed_models=("down",)))  # type: ignore[arg-type]
        )
    assert caught.value.reason == "MODEL_NOT_ALLOWED" and secret.calls == 0


def vision(name: str, *capabilities: str, fallbacks: tuple[str, ...] = ()) -> ServedModel:
    spec = ModelSpec(name=name, backend="openai", fallbacks=fallbacks, capabilities=capabilities)
    chat = FakeChat()
    return ServedModel(spec, chat, 0, chat=chat)  # type: ignore[arg-type]


IMAGE_REQUEST = ChatRequest(
    "text",
    (
        Message("system", "Be brief."),
        Message("user", "What?", parts=("What?", ImageInput(url="https://x/a.png"))),
    ),
)


def test_media_parts_skip_models_without_the_capability() -> None:
    reg = registry(
        vision("text", fallbacks=("hears", "sees")),
        vision("hears", "audio"),
        vision("sees", "vision"),
    )
    events = run(Router(OneCatalog(reg)), IMAGE_REQUEST)  # type: ignore[arg-type]
    assert events[0] == Routed("sees", "aqueduct")


def test_media_parts_are_refused_naming_part_and_model_when_no_model_takes_them() -> None:
    reg = registry(vision("text", fallbacks=("hears",)), vision("hears", "audio"))
    with pytest.raises(ServiceError) as caught:
        run(Router(OneCatalog(reg)), IMAGE_REQUEST)  # type: ignore[arg-type]
    error = caught.value
    assert (error.kind, error.reason, error.param) == (
        Kind.INVALID_ARGUMENT,
        "UNSUPPORTED_CONTENT_TYPE",
        "messages[1].content[1]",
    )
    assert "model 'text'" in error.message and "'vision'" in error.message
    assert "nor does any fallback" in error.message
    file_image = ChatRequest(
        "hears",
        (Message("user", "", parts=(ImageInput(data=b"x", filename="cat.png"),)),),
    )
    with pytest.raises(ServiceError) as caught:
        run(Router(OneCatalog(registry(vision("hears", "audio")))), file_image)  # type: ignore[arg-type]
    assert "File 'cat.png' in messages[0].content[0] is an image" in caught.value.message
    assert "image_url" in caught.value.message
