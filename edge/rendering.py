"""What every generation route renders the same way: a completion's identity,
usage, log probabilities, stream chunks and error events, and each choice's text
gathered from inference's delta batches. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from aqueduct.inference.v1 import inference_pb2 as pb

from edge.errors import ApiError

FINISH_REASONS = {
    pb.FINISH_REASON_STOP: "stop",
    pb.FINISH_REASON_LENGTH: "length",
    pb.FINISH_REASON_CONTENT_FILTER: "content_filter",
    pb.FINISH_REASON_TOOL_CALLS: "tool_calls",
}


@dataclass
class Completion:
    """What the client is told about one completion, filled in as the stream runs."""

    id: str
    created: int
    model: str
    provider: str = ""


def provider_field(provider: str) -> dict[str, str]:
    """Aqueduct's `provider` extension: who served the answer; left out, not null,
    when unknown (OpenAI's schemas have no such field to be null)."""
    return {"provider": provider} if provider else {}


def usage_json(usage: pb.Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


def token_logprob_json(entry: pb.TokenLogprob) -> dict[str, Any]:
    """One entry of a chat choice's `logprobs.content`."""
    return {
        "token": entry.token,
        "logprob": entry.logprob,
        "bytes": list(entry.bytes),
        "top_logprobs": [
            {"token": t.token, "logprob": t.logprob, "bytes": list(t.bytes)}
            for t in entry.top_logprobs
        ],
    }


@dataclass
class ChoiceText:
    """One choice's text, log probabilities and tool calls, gathered from the stream."""

    parts: list[str]
    logprobs: list[pb.TokenLogprob]
    tool_calls: dict[int, pb.ToolCallDelta] = field(default_factory=dict)


def sse_chunk(
    meta: Completion, kind: str, choices: list[dict[str, Any]], include_usage: bool, usage: object
) -> bytes:
    """One `data:` event of a stream (chat or text completion); `usage` only when asked."""
    chunk: dict[str, Any] = {
        "id": meta.id,
        "object": kind,
        "created": meta.created,
        "model": meta.model,
        "choices": choices,
    }
    chunk.update(provider_field(meta.provider))
    if include_usage:
        chunk["usage"] = usage
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def gather(choices: dict[int, ChoiceText], batch: pb.DeltaBatch) -> None:
    """Add a batch's deltas to each choice's text (a whole, non-streamed answer)."""
    for delta in shown(batch):
        _add(choices.setdefault(delta.choice_index, ChoiceText([], [])), delta)


def each_delta(batch: pb.DeltaBatch) -> list[tuple[int, ChoiceText]]:
    """Each delta of a batch on its own (one stream event each, as the backend cut them)."""
    pieces = []
    for delta in shown(batch):
        choice = ChoiceText([], [])
        _add(choice, delta)
        pieces.append((delta.choice_index, choice))
    return pieces


def shown(batch: pb.DeltaBatch) -> list[pb.Delta]:
    # A delta without text is a token still held back (a possible stop): nothing to show.
    return [d for d in batch.deltas if d.content or d.logprobs or d.tool_calls]


def _add(choice: ChoiceText, delta: pb.Delta) -> None:
    choice.parts.append(delta.content)
    choice.logprobs.extend(delta.logprobs)
    for part in delta.tool_calls:
        call = choice.tool_calls.setdefault(part.index, pb.ToolCallDelta(index=part.index))
        call.id = call.id or part.id
        call.name = call.name or part.name
        call.arguments += part.arguments


def error_event(error: ApiError) -> bytes:
    return b"data: " + error.json() + b"\n\n"
