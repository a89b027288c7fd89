"""What an embedding request is, independent of transport and backend."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from services.inference.generation import Backend

# One input: a text, or token ids already made by the model's tokenizer.
EmbeddingInput = str | tuple[int, ...]


@dataclass(frozen=True, slots=True)
class EmbedRequest:
    model: str
    inputs: tuple[EmbeddingInput, ...]
    dimensions: int | None = None
    user: str = ""
    fallback_models: tuple[str, ...] = ()
    allowed_models: tuple[str, ...] = ()  # the caller's models (a key's list); (): all
    input_type: str = ""  # "query" | "passage" | "" (the model's default)
    configured_fallbacks: bool = True  # False: not the models file's fallbacks


@dataclass(frozen=True, slots=True)
class Embeddings:
    # One row per input, in input order (float32 values; an upstream's arrive as
    # array("f") rows, without numpy, which a gateway of upstreams never loads).
    vectors: Sequence[Sequence[float]]
    prompt_tokens: int


class EmbeddingBackend(Backend, Protocol):
    async def embed(self, request: EmbedRequest) -> Embeddings: ...
