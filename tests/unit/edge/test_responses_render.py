"""The Responses stream writer: events in OpenAI's order, numbered without gaps,
also when keeping the finished response fails and an error event replaces the end."""

from __future__ import annotations

from typing import Any

import orjson
from aqueduct.inference.v1 import inference_pb2 as pb

from edge.errors import ApiError
from edge.rendering import Completion
from edge.responses_render import ResponsesWriter
from edge.responses_request import parse_responses_request


def events(raw: bytes) -> list[dict[str, Any]]:
    found = []
    for block in raw.decode().strip().split("\n\n"):
        name, data = block.split("\n")
        event = orjson.loads(data.removeprefix("data: "))
        assert name == f"event: {event['type']}"
        found.append(event)
    return found


def writer() -> ResponsesWriter:
    parsed = parse_responses_request({"model": "m", "input": "hi"})
    return ResponsesWriter(parsed, Completion("resp_abc", 1, "m"))


def text(*parts: str) -> pb.DeltaBatch:
    return pb.DeltaBatch(deltas=[pb.Delta(content=p) for p in parts])


def summary(reason: int = pb.FINISH_REASON_STOP) -> pb.Summary:
    return pb.Summary(
        usage=pb.Usage(prompt_tokens=3, completion_tokens=2),
        choice_ends=[pb.ChoiceEnd(choice_index=0, finish_reason=reason)],
    )


def test_text_then_tool_call_then_completed() -> None:
    w = writer()
    raw = w.deltas(text("Hel", "lo"))
    call = pb.ToolCallDelta(index=0, id="c1", name="f", arguments='{"a"')
    raw += w.deltas(pb.DeltaBatch(deltas=[pb.Delta(tool_calls=[call])]))
    more = pb.ToolCallDelta(index=0, arguments=": 1}")
    raw += w.deltas(pb.DeltaBatch(deltas=[pb.Delta(tool_calls=[more])]))
    raw += w.start() + w.finish(summary(pb.FINISH_REASON_TOOL_CALLS))
    found = events(raw)
    assert [e["type"] for e in found] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in found] == list(range(len(found)))
    final = found[-1]["response"]
    assert [i["type"] for i in final["output"]] == ["message", "function_call"]
    assert final["output"][0]["content"][0]["text"] == "Hello"
    assert final["output"][1]["arguments"] == '{"a": 1}'
    assert final["usage"]["total_tokens"] == 5


def test_cut_by_max_tokens_is_incomplete() -> None:
    w = writer()
    found = events(w.deltas(text("a")) + w.finish(summary(pb.FINISH_REASON_LENGTH)))
    assert found[-1]["type"] == "response.incomplete"
    assert found[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert found[-2]["item"]["status"] == "incomplete"


def test_an_error_after_finish_takes_the_unsent_sequence_numbers() -> None:
    w = writer()
    sent = events(w.deltas(text("a")))
    w.finish(summary())  # rendered, then keeping it failed: never sent
    error = events(w.error(ApiError(503, "down", code="service_unavailable")))
    assert error == [
        {
            "type": "error",
            "sequence_number": len(sent),
            "code": "service_unavailable",
            "message": "down",
            "param": None,
        }
    ]
