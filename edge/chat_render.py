"""OpenAI `chat.completion` objects and `chat.completion.chunk` stream events
from inference's messages. Pure: no I/O.
"""

from __future__ import annotations

from typing import Any

import orjson
from aqueduct.inference.v1 import inference_pb2 as pb

from core.enum_names import FINISH_REASONS
from edge.errors import ApiError
from edge.rendering import (
    ChoiceText,
    Completion,
    each_delta,
    error_event,
    provider_field,
    shown,
    sse_chunk,
    token_logprob_json,
    usage_json,
)


def tool_call_json(call: pb.ToolCallDelta, stream: bool) -> dict[str, Any]:
    """A tool call in a message, or its part in a stream delta (id and name once)."""
    function: dict[str, Any] = {"arguments": call.arguments}
    if call.name or not stream:
        function["name"] = call.name
    rendered: dict[str, Any] = {"id": call.id, "type": "function", "function": function}
    if stream:
        rendered = {"index": call.index, "function": function}
        if call.id:
            rendered.update(id=call.id, type="function")
    return rendered


def _message(choice: ChoiceText) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(choice.parts),
        "refusal": None,
    }
    if choice.tool_calls:
        message["content"] = message["content"] or None
        message["tool_calls"] = [
            tool_call_json(c, stream=False) for _, c in sorted(choice.tool_calls.items())
        ]
    return message


def completion_json(
    meta: Completion, choices: dict[int, ChoiceText], summary: pb.Summary, logprobs: bool
) -> bytes:
    finish = {
        end.choice_index: FINISH_REASONS.get(end.finish_reason) for end in summary.choice_ends
    }
    indexes = sorted(set(finish) | set(choices)) or [0]
    empty = ChoiceText([], [])
    return orjson.dumps(
        {
            "id": meta.id,
            "object": "chat.completion",
            "created": meta.created,
            "model": summary.model or meta.model,
            **provider_field(summary.provider or meta.provider),
            "choices": [
                {
                    "index": index,
                    "message": _message(choices.get(index, empty)),
                    "logprobs": {
                        "content": [
                            token_logprob_json(e) for e in choices.get(index, empty).logprobs
                        ],
                        "refusal": None,
                    }
                    if logprobs
                    else None,
                    "finish_reason": finish.get(index) or "stop",
                }
                for index in indexes
            ],
            "usage": usage_json(summary.usage),
        }
    )


TEXT_SLOT = "\ufdd0aqueduct-text\ufdd0"  # a noncharacter: never in a model's text


class ChatWriter:
    """Renders stream messages as SSE `data:` events, one bytes object per message."""

    def __init__(
        self, meta: Completion, include_usage: bool, n: int = 1, logprobs: bool = False
    ) -> None:
        self.meta = meta
        self.include_usage = include_usage
        self.n = n
        self.logprobs = logprobs
        # (choice, model, provider) -> the bytes around a text delta's content
        self._text_events: dict[tuple[int, str, str], tuple[bytes, bytes]] = {}

    def _chunk(self, choices: list[dict[str, Any]], usage: object = None) -> bytes:
        return sse_chunk(self.meta, "chat.completion.chunk", choices, self.include_usage, usage)

    def _text_event(self, index: int, text: str) -> bytes:
        """A plain text delta: the same bytes `_chunk` makes, from a template, since
        a stream is mostly these and only their text differs (~1 µs, not ~8)."""
        key = (index, self.meta.model, self.meta.provider)
        if (around := self._text_events.get(key)) is None:
            choice = {
                "index": index,
                "delta": {"content": TEXT_SLOT},
                "logprobs": None,
                "finish_reason": None,
            }
            head, _, tail = self._chunk([choice]).rpartition(orjson.dumps(TEXT_SLOT))
            around = self._text_events[key] = (head, tail)
        return around[0] + orjson.dumps(text) + around[1]

    def start(self) -> bytes:
        """The first event of each choice: the assistant role, as OpenAI sends it."""
        return b"".join(
            self._chunk(
                [
                    {
                        "index": index,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                ]
            )
            for index in range(self.n)
        )

    def deltas(self, batch: pb.DeltaBatch) -> bytes:
        """One event per delta, all of the batch in one write."""
        if not self.logprobs and not any(d.tool_calls for d in batch.deltas):
            return b"".join(self._text_event(d.choice_index, d.content) for d in shown(batch))
        return b"".join(
            self._chunk(
                [
                    {
                        "index": index,
                        "delta": _delta(choice),
                        "logprobs": {
                            "content": [token_logprob_json(e) for e in choice.logprobs],
                            "refusal": None,
                        }
                        if self.logprobs
                        else None,
                        "finish_reason": None,
                    }
                ]
            )
            for index, choice in each_delta(batch)
        )

    def error(self, error: ApiError) -> bytes:
        return error_event(error)

    def finish(self, summary: pb.Summary) -> bytes:
        events = [
            self._chunk(
                [
                    {
                        "index": end.choice_index,
                        "delta": {},
                        "logprobs": None,
                        "finish_reason": FINISH_REASONS.get(end.finish_reason, "stop"),
                    }
                ]
            )
            for end in summary.choice_ends
        ]
        if self.include_usage:
            events.append(self._chunk([], usage_json(summary.usage)))
        events.append(b"data: [DONE]\n\n")
        return b"".join(events)


def _delta(choice: ChoiceText) -> dict[str, Any]:
    delta: dict[str, Any] = {"content": "".join(choice.parts)}
    if choice.tool_calls:
        delta["tool_calls"] = [
            tool_call_json(c, stream=True) for _, c in sorted(choice.tool_calls.items())
        ]
        delta["content"] = delta["content"] or None
    return delta
