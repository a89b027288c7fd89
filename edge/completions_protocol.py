"""OpenAI text completions (`/completions`) on the wire <-> aqueduct.inference.v1.

Parsing checks every field and names the offending one in `param`; rendering
produces OpenAI's `text_completion` objects and stream chunks, choices indexed
prompt-major (prompt p's j-th choice is p * n + j). Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from aqueduct.inference.v1 import inference_pb2 as pb

from core.enum_names import FINISH_REASONS
from edge.chat_request import PendingContent
from edge.errors import ApiError, invalid
from edge.rendering import (
    ChoiceText,
    Completion,
    each_delta,
    error_event,
    provider_field,
    sse_chunk,
    usage_json,
)
from edge.request_fields import (
    TOOL_PARAMS,
    UNSUPPORTED_PARAMS,
    object_with_model,
    parse_fallback_models,
    parse_sampling,
    parse_stream,
)

MAX_PROMPTS = 2048
MAX_LOGPROBS = 5
MAX_BEST_OF = 20
DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /completions


@dataclass(frozen=True)
class CompletionCall:
    """A validated completion request: what to send to inference, how to answer."""

    request: pb.StreamCompletionRequest
    stream: bool
    include_usage: bool
    logprobs: int | None  # None: no log probabilities in the answer
    pending: tuple[PendingContent, ...] = ()  # prompts have no file parts


def parse_completion_request(raw: object) -> CompletionCall:
    body, model = object_with_model(raw)
    prompts = _prompts(body.get("prompt"))
    for name in sorted(UNSUPPORTED_PARAMS | TOOL_PARAMS):
        if body.get(name) not in (None, [], {}):
            raise invalid(
                name, f"'{name}' is not a parameter of /completions.", "unsupported_parameter"
            )
    sampling = parse_sampling(body)
    if not sampling.HasField("max_tokens"):
        sampling.max_tokens = DEFAULT_MAX_TOKENS
    n = sampling.n if sampling.HasField("n") else 1
    stream, include_usage = parse_stream(body)
    logprobs = _int(body, "logprobs", 0, MAX_LOGPROBS)
    if logprobs is not None:
        sampling.logprobs = True
        sampling.top_logprobs = logprobs
    best_of = _int(body, "best_of", 1, MAX_BEST_OF)
    if best_of is not None:
        if best_of < n:
            raise invalid("best_of", f"'best_of' ({best_of}) must be at least 'n' ({n}).")
        if stream and best_of > 1:
            raise invalid("best_of", "'best_of' greater than 1 cannot be used with 'stream'.")
    suffix = body.get("suffix")
    if suffix is not None and not isinstance(suffix, str):
        raise invalid("suffix", "'suffix' must be a string.", "invalid_type")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise invalid("user", "'user' must be a string.", "invalid_type")
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise invalid("metadata", "'metadata' must be an object.", "invalid_type")
    request = pb.StreamCompletionRequest(
        model=model,
        prompts=prompts,
        sampling=sampling,
        suffix=suffix or "",
        echo=_bool(body, "echo"),
        user=user or "",
        fallback_models=parse_fallback_models(body),
    )
    if best_of is not None:
        request.best_of = best_of
    return CompletionCall(request, stream, include_usage, logprobs)


def _prompts(prompt: object) -> list[pb.EmbeddingInput]:
    """A string, strings, token ids, or lists of token ids; absent means ""."""
    if prompt is None:
        return [pb.EmbeddingInput(text="")]
    if isinstance(prompt, str):
        return [pb.EmbeddingInput(text=prompt)]
    message = (
        "'prompt' must be a string, an array of strings, an array of token ids, "
        "or an array of token-id arrays."
    )
    if not isinstance(prompt, list) or not prompt:
        raise invalid("prompt", message if prompt != [] else "'prompt' must not be empty.")
    if all(_is_token(t) for t in prompt):
        return [pb.EmbeddingInput(tokens=pb.TokenIds(ids=prompt))]
    if len(prompt) > MAX_PROMPTS:
        raise invalid("prompt", f"'prompt' may hold at most {MAX_PROMPTS} prompts.")
    prompts: list[pb.EmbeddingInput] = []
    for item in prompt:
        if isinstance(item, str):
            prompts.append(pb.EmbeddingInput(text=item))
        elif isinstance(item, list) and item and all(_is_token(t) for t in item):
            prompts.append(pb.EmbeddingInput(tokens=pb.TokenIds(ids=item)))
        else:
            raise invalid("prompt", message, "invalid_type")
    return prompts


def _is_token(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31


def _bool(body: dict[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise invalid(name, f"'{name}' must be a boolean.", "invalid_type")
    return bool(value)


def _int(body: dict[str, Any], name: str, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(name, f"'{name}' must be an integer.", "invalid_type")
    if not low <= value <= high:
        raise invalid(name, f"'{name}' must be between {low} and {high}; got {value}.")
    return value


# --- rendering ---------------------------------------------------------------


@dataclass
class ChoiceLogprobs:
    """A choice's `logprobs` object, grown as tokens arrive; offsets count
    characters of the choice's text (the echoed prompt included)."""

    offset: int = 0
    tokens: list[str] = field(default_factory=list)
    token_logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[dict[str, float]] = field(default_factory=list)
    text_offset: list[int] = field(default_factory=list)

    def add(self, text: str, entries: list[pb.TokenLogprob]) -> dict[str, Any]:
        """Record one delta; its part of the object (for a stream chunk)."""
        start = len(self.tokens)
        offset = self.offset
        for entry in entries:
            self.tokens.append(entry.token)
            self.token_logprobs.append(entry.logprob)
            self.top_logprobs.append({t.token: t.logprob for t in entry.top_logprobs})
            self.text_offset.append(offset)
            offset += len(entry.token)
        self.offset += len(text)
        return self.json(start)

    def json(self, start: int = 0) -> dict[str, Any]:
        return {
            "tokens": self.tokens[start:],
            "token_logprobs": self.token_logprobs[start:],
            "top_logprobs": self.top_logprobs[start:],
            "text_offset": self.text_offset[start:],
        }


def _finish_reasons(summary: pb.Summary) -> dict[int, str]:
    return {
        e.choice_index: FINISH_REASONS.get(e.finish_reason, "stop") for e in summary.choice_ends
    }


def completion_json(
    meta: Completion, choices: dict[int, ChoiceText], summary: pb.Summary, logprobs: bool
) -> bytes:
    finish = _finish_reasons(summary)
    rendered = []
    for index in sorted(set(finish) | set(choices)):
        choice = choices.get(index, ChoiceText([], []))
        lp = ChoiceLogprobs()
        lp.add("".join(choice.parts), choice.logprobs)
        rendered.append(
            {
                "text": "".join(choice.parts),
                "index": index,
                "logprobs": lp.json() if logprobs else None,
                "finish_reason": finish.get(index, "stop"),
            }
        )
    return orjson.dumps(
        {
            "id": meta.id,
            "object": "text_completion",
            "created": meta.created,
            "model": summary.model or meta.model,
            **provider_field(summary.provider or meta.provider),
            "choices": rendered,
            "usage": usage_json(summary.usage),
        }
    )


class CompletionWriter:
    """Renders stream messages as SSE `data:` events of `text_completion` chunks."""

    def __init__(self, meta: Completion, include_usage: bool, logprobs: bool) -> None:
        self.meta = meta
        self.include_usage = include_usage
        self.logprobs = logprobs
        self._choices: dict[int, ChoiceLogprobs] = {}

    def _chunk(self, choices: list[dict[str, Any]], usage: object = None) -> bytes:
        return sse_chunk(self.meta, "text_completion", choices, self.include_usage, usage)

    def start(self) -> bytes:
        return b""  # text completions send no role event

    def deltas(self, batch: pb.DeltaBatch) -> bytes:
        """One event per delta, all of the batch in one write."""
        events = []
        for index, choice in each_delta(batch):
            text = "".join(choice.parts)
            logprobs = self._choices.setdefault(index, ChoiceLogprobs()).add(text, choice.logprobs)
            events.append(
                self._chunk(
                    [
                        {
                            "text": text,
                            "index": index,
                            "logprobs": logprobs if self.logprobs else None,
                            "finish_reason": None,
                        }
                    ]
                )
            )
        return b"".join(events)

    def error(self, error: ApiError) -> bytes:
        return error_event(error)

    def finish(self, summary: pb.Summary) -> bytes:
        empty = ChoiceLogprobs().json()
        events = [
            self._chunk(
                [
                    {
                        "text": "",
                        "index": index,
                        "logprobs": empty if self.logprobs else None,
                        "finish_reason": reason,
                    }
                ]
            )
            for index, reason in sorted(_finish_reasons(summary).items())
        ]
        if self.include_usage:
            events.append(self._chunk([], usage_json(summary.usage)))
        events.append(b"data: [DONE]\n\n")
        return b"".join(events)
