"""Text completions (`/completions`) on the wire: the body out, `text_completion`
answers in, folded as chat's are."""

from __future__ import annotations

import math
from typing import Any

import orjson

from services.inference.generation import (
    CompletionRequest,
    TokenLogprob,
    TopLogprob,
)
from services.inference.openai_wire.chat import ChatChunks
from services.inference.openai_wire.sampling import add_sampling, response_format_json


def completion_payload(request: CompletionRequest, upstream_model: str) -> bytes:
    """A `/completions` body. The upstream is asked for one JSON answer when the
    caller takes it whole, and with `best_of` (OpenAI refuses it with `stream`)."""
    prompts = [p if isinstance(p, str) else list(p) for p in request.prompts]
    s = request.sampling
    streams = not request.whole and not (request.best_of is not None and request.best_of > 1)
    body: dict[str, Any] = {
        "model": upstream_model,
        "prompt": prompts[0] if len(prompts) == 1 else prompts,
        "stream": streams,
    }
    if streams:
        body["stream_options"] = {"include_usage": True}
    add_sampling(body, s)
    if request.best_of is not None:
        body["best_of"] = request.best_of
    if s.n != 1:
        body["n"] = s.n
    if s.logprobs:
        body["logprobs"] = s.top_logprobs
    if s.logit_bias:
        body["logit_bias"] = {str(token): bias for token, bias in s.logit_bias}
    if request.echo:
        body["echo"] = True
    if request.suffix:
        body["suffix"] = request.suffix
    if request.user:
        body["user"] = request.user
    response_format = response_format_json(s.response_format)
    if response_format is not None:
        body["response_format"] = response_format
    return orjson.dumps(body)


class TextChunks(ChatChunks):
    """As ChatChunks, for `/completions` answers (`text_completion` objects:
    a choice's `text`, legacy logprobs)."""

    def _choice_text(self, choice: dict[str, Any], part: object) -> object:
        return choice.get("text")

    def _choice_logprobs(self, value: object) -> tuple[TokenLogprob, ...]:
        return _text_logprobs(value)


def _text_logprobs(value: object) -> tuple[TokenLogprob, ...]:
    """A `/completions` choice's legacy `logprobs` object; a null log probability
    (an echoed first token) becomes NaN, which renders as null again."""
    if not isinstance(value, dict):
        return ()
    tokens_, logprobs, tops = (
        value.get("tokens"),
        value.get("token_logprobs"),
        value.get("top_logprobs"),
    )
    if not isinstance(tokens_, list) or not isinstance(logprobs, list):
        return ()
    tops = tops if isinstance(tops, list) else []
    entries: list[TokenLogprob] = []
    for position, token in enumerate(tokens_):
        if not isinstance(token, str):
            continue
        logprob = logprobs[position] if position < len(logprobs) else None
        top = tops[position] if position < len(tops) else None
        entries.append(
            TokenLogprob(
                token,
                float(logprob) if isinstance(logprob, int | float) else math.nan,
                token.encode(),
                tuple(
                    TopLogprob(t, float(p), t.encode())
                    for t, p in (top.items() if isinstance(top, dict) else ())
                    if isinstance(p, int | float)
                ),
            )
        )
    return tuple(entries)
