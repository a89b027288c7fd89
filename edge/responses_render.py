"""OpenAI `response` objects and their semantic stream events, from inference's
chat messages. Pure: no I/O.

A response has one choice (chat's n=1): its text becomes one `message` output
item with one `output_text` part, each tool call a `function_call` item.
"""

from __future__ import annotations

from typing import Any

import orjson
from aqueduct.inference.v1 import inference_pb2 as pb

from core.enum_names import FINISH_REASONS
from edge.errors import ApiError
from edge.rendering import ChoiceText, Completion, provider_field, shown
from edge.responses_request import ResponsesCall

# finish reason -> (status, incomplete_details)
_INCOMPLETE = {
    "length": {"reason": "max_output_tokens"},
    "content_filter": {"reason": "content_filter"},
}


def _suffix(meta: Completion) -> str:
    return meta.id.removeprefix("resp_")


def message_item(meta: Completion, text: str, status: str) -> dict[str, Any]:
    return {
        "id": f"msg_{_suffix(meta)}",
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [text_part(text)] if text or status != "in_progress" else [],
    }


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def call_item(meta: Completion, call: pb.ToolCallDelta, status: str) -> dict[str, Any]:
    return {
        "id": f"fc_{_suffix(meta)}_{call.index}",
        "type": "function_call",
        "status": status,
        "call_id": call.id,
        "name": call.name,
        "arguments": call.arguments,
    }


def usage_json(usage: pb.Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


def outcome(summary: pb.Summary) -> tuple[str, dict[str, str] | None]:
    """(status, incomplete_details) from how the one choice finished."""
    reason = next(
        (FINISH_REASONS.get(e.finish_reason) for e in summary.choice_ends if e.choice_index == 0),
        None,
    )
    details = _INCOMPLETE.get(reason or "")
    return ("incomplete" if details else "completed"), details


def response_json(
    parsed: ResponsesCall,
    meta: Completion,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None,
    incomplete_details: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "id": meta.id,
        "object": "response",
        "created_at": meta.created,
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": incomplete_details,
        "model": meta.model,
        **provider_field(meta.provider),
        "output": output,
        "previous_response_id": parsed.previous_response_id,
        "reasoning": {"effort": None, "summary": None},
        "store": parsed.store,
        "truncation": "disabled",
        **({"usage": usage} if usage is not None else {}),  # known once it has ended
        **parsed.echo,
    }


def output_items(meta: Completion, choice: ChoiceText, status: str) -> list[dict[str, Any]]:
    text = "".join(choice.parts)
    items = []
    if text or not choice.tool_calls:
        items.append(message_item(meta, text, status))
    items += [call_item(meta, c, "completed") for _, c in sorted(choice.tool_calls.items())]
    return items


def response_body(
    parsed: ResponsesCall, meta: Completion, choices: dict[int, ChoiceText], summary: pb.Summary
) -> bytes:
    meta.model = summary.model or meta.model
    meta.provider = summary.provider or meta.provider
    status, details = outcome(summary)
    choice = choices.get(0, ChoiceText([], []))
    return orjson.dumps(
        response_json(
            parsed,
            meta,
            status,
            output_items(meta, choice, status),
            usage_json(summary.usage),
            details,
        )
    )


class ResponsesWriter:
    """Renders stream messages as OpenAI's semantic Responses events, each with
    its `sequence_number`; one text delta event per delta the backend cut."""

    def __init__(self, parsed: ResponsesCall, meta: Completion) -> None:
        self.parsed = parsed
        self.meta = meta
        self.sequence = 0
        self.items: list[dict[str, Any]] = []  # output items, final once closed
        self.text: dict[str, Any] | None = None  # the open message item
        self.calls: dict[int, dict[str, Any]] = {}  # tool call index -> its open item
        self.open_calls: list[int] = []
        self.started = False
        self.final: dict[str, Any] | None = None  # the whole response, once finished
        self.finish_from = 0  # the first sequence number finish() used

    def _event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    def _response(
        self,
        status: str,
        usage: dict[str, Any] | None = None,
        details: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        return response_json(self.parsed, self.meta, status, self.items, usage, details)

    def start(self) -> bytes:
        """`response.created` and `response.in_progress`, once: the pipeline renders the
        first message before it asks for the start (so that the model is the served
        one), and each render begins with these if they were not sent yet."""
        if self.started:
            return b""
        self.started = True
        response = self._response("in_progress")
        return self._event("response.created", response=response) + self._event(
            "response.in_progress", response=response
        )

    def deltas(self, batch: pb.DeltaBatch) -> bytes:
        events: list[bytes] = [self.start()]
        for delta in shown(batch):
            if delta.choice_index != 0:
                continue
            if delta.content:
                events += self._text_delta(delta.content)
            for part in delta.tool_calls:
                events += self._call_delta(part)
        return b"".join(events)

    def _text_delta(self, content: str) -> list[bytes]:
        events = []
        if self.text is None:
            events += self._close_calls("completed")
            self.text = message_item(self.meta, "", "in_progress")
            self.items.append(self.text)
            index = len(self.items) - 1
            events.append(
                self._event("response.output_item.added", output_index=index, item=self.text)
            )
            self.text["content"] = [text_part("")]
            events.append(
                self._event(
                    "response.content_part.added",
                    item_id=self.text["id"],
                    output_index=index,
                    content_index=0,
                    part=text_part(""),
                )
            )
        self.text["content"][0]["text"] += content
        events.append(
            self._event(
                "response.output_text.delta",
                item_id=self.text["id"],
                output_index=self.items.index(self.text),
                content_index=0,
                delta=content,
                logprobs=[],
            )
        )
        return events

    def _call_delta(self, part: pb.ToolCallDelta) -> list[bytes]:
        events = []
        item = self.calls.get(part.index)
        if item is None:
            events += self._close_text("completed")
            call = pb.ToolCallDelta(index=part.index, id=part.id, name=part.name)
            item = self.calls[part.index] = call_item(self.meta, call, "in_progress")
            self.items.append(item)
            self.open_calls.append(part.index)
            events.append(
                self._event(
                    "response.output_item.added", output_index=len(self.items) - 1, item=item
                )
            )
        item["call_id"] = item["call_id"] or part.id
        item["name"] = item["name"] or part.name
        if part.arguments:
            item["arguments"] += part.arguments
            events.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=self.items.index(item),
                    delta=part.arguments,
                )
            )
        return events

    def _close_text(self, status: str) -> list[bytes]:
        item, self.text = self.text, None
        if item is None:
            return []
        index = self.items.index(item)
        part = item["content"][0]
        item["status"] = status
        return [
            self._event(
                "response.output_text.done",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                text=part["text"],
                logprobs=[],
            ),
            self._event(
                "response.content_part.done",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                part=part,
            ),
            self._event("response.output_item.done", output_index=index, item=item),
        ]

    def _close_calls(self, status: str) -> list[bytes]:
        events = []
        for call_index in self.open_calls:
            item = self.calls[call_index]
            index = self.items.index(item)
            item["status"] = status
            events.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=index,
                    name=item["name"],
                    arguments=item["arguments"],
                )
            )
            events.append(self._event("response.output_item.done", output_index=index, item=item))
        self.open_calls = []
        return events

    def finish(self, summary: pb.Summary) -> bytes:
        self.finish_from = self.sequence
        status, details = outcome(summary)
        events = [self.start(), *self._close_text(status), *self._close_calls("completed")]
        if not self.items:  # an empty answer is still one (empty) message, as OpenAI's
            item = message_item(self.meta, "", status)
            self.items.append(item)
            events.append(self._event("response.output_item.added", output_index=0, item=item))
            events.append(self._event("response.output_item.done", output_index=0, item=item))
        response = self.final = self._response(status, usage_json(summary.usage), details)
        events.append(self._event(f"response.{status}", response=response))
        return b"".join(events)

    def error(self, error: ApiError) -> bytes:
        if self.final is not None:  # keeping it failed: its final events were never sent
            self.sequence = self.finish_from
        return self.start() + self._event(
            "error", code=error.code, message=error.message, param=error.param
        )
