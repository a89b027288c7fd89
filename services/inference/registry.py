"""Which backend serves which model id (names and aliases)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from services.common.config import ConfigError
from services.common.errors import Kind, ServiceError
from services.inference.config import Settings
from services.inference.generation import ChatBackend
from services.inference.local_model import LocalChatModel, LocalModelOptions, bundled_model_path
from services.inference.models_file import ModelsConfig, ModelSpec


@dataclass(frozen=True)
class ServedModel:
    spec: ModelSpec
    backend: ChatBackend
    created: int


class ModelRegistry:
    def __init__(self, models: list[ServedModel]) -> None:
        self.models = models
        self._by_id: dict[str, ServedModel] = {}
        for model in models:
            for model_id in (model.spec.name, *model.spec.aliases):
                self._by_id[model_id] = model

    def resolve(self, model_id: str) -> ServedModel:
        model = self._by_id.get(model_id)
        if model is None:
            raise ServiceError(
                Kind.NOT_FOUND,
                "MODEL_NOT_FOUND",
                f"The model '{model_id}' does not exist or is not served here.",
                param="model",
            )
        return model

    async def start(self) -> None:
        for model in self.models:
            await model.backend.start()

    async def close(self) -> None:
        for model in self.models:
            await model.backend.close()


def build_registry(config: ModelsConfig, settings: Settings) -> ModelRegistry:
    now = int(time.time())
    return ModelRegistry(
        [ServedModel(spec, _backend(spec, settings), now) for spec in config.models]
    )


def _backend(spec: ModelSpec, settings: Settings) -> ChatBackend:
    if spec.backend == "local":
        options = LocalModelOptions(
            path=spec.path or bundled_model_path(),
            n_ctx=settings.local_n_ctx,
            n_threads=settings.local_threads,
            max_waiting=settings.local_max_waiting,
        )
        return LocalChatModel(spec.name, options)
    raise ConfigError(
        f"model '{spec.name}': backend '{spec.backend}' is not available in this build"
    )
