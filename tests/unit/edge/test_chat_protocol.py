"""OpenAI chat JSON <-> inference protobuf <-> SSE, without any server."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from aqueduct.inference.v1 import inference_pb2 as pb

from edge.chat_protocol import (
    ChatWriter,
    Completion,
    completion_json,
    error_event,
    parse_chat_request,
)
from edge.errors import ApiError

BASE: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def parse(**extra: Any) -> Any:
    return parse_chat_request({**BASE, **extra})


def test_minimal_request_becomes_protobuf_with_unset_sampling() -> None:
    call = parse()
    assert call.request.model == "m"
    assert [(m.role, m.content) for m in call.request.messages] == [("user", "hi")]
    assert not call.stream and not call.include_usage
    for field in ("max_tokens", "temperature", "top_p", "seed"):
        assert not call.request.sampling.HasField(field)


def test_sampling_fields_are_carried() -> None:
    call = parse(
        max_tokens=7,
        temperature=0,
        top_p=0.5,
        seed=42,
        stop="END",
        presence_penalty=-1,
        frequency_penalty=1.5,
        user="u-1",
    )
    s = call.request.sampling
    assert (s.max_tokens, s.temperature, s.top_p, s.seed) == (7, 0.0, 0.5, 42)
    assert s.HasField("temperature")  # zero is a value, not "unset"
    assert list(s.stops) == ["END"]
    assert (s.presence_penalty, s.frequency_penalty) == (-1.0, 1.5)
    assert call.request.user == "u-1"


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    assert parse(max_tokens=9, max_completion_tokens=3).request.sampling.max_tokens == 3


def test_text_parts_are_joined_and_assistant_content_may_be_null() -> None:
    call = parse(
        messages=[
            {
                "role": "system",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            },
            {"role": "assistant", "content": None},
            {"role": "user", "content": "q", "name": "ann"},
        ]
    )
    assert [m.content for m in call.request.messages] == ["a\nb", "", "q"]
    assert call.request.messages[2].name == "ann"


def test_stream_options_need_stream() -> None:
    assert parse(stream=True, stream_options={"include_usage": True}).include_usage
    with pytest.raises(ApiError) as caught:
        parse(stream_options={"include_usage": True})
    assert caught.value.param == "stream_options"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m"}, "messages"),
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({**BASE, "messages": [{"role": None, "content": "x"}]}, "messages[0].role"),
        ({**BASE, "temperature": True}, "temperature"),
        ({**BASE, "max_tokens": True}, "max_tokens"),
        ({**BASE, "stop": ["a"] * 5}, "stop"),
        ({**BASE, "logprobs": True}, "logprobs"),
        ({**BASE, "response_format": {"type": "json_object"}}, "response_format"),
    ],
)
def test_invalid_fields_are_named(body: dict[str, Any], param: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_chat_request(body)
    assert caught.value.status == 400
    assert caught.value.param == param


def test_non_object_body_is_rejected() -> None:
    with pytest.raises(ApiError):
        parse_chat_request(["not", "an", "object"])


def summary(reason: int = pb.FINISH_REASON_STOP) -> pb.Summary:
    return pb.Summary(
        choice_ends=[pb.ChoiceEnd(choice_index=0, finish_reason=reason)],
        usage=pb.Usage(prompt_tokens=5, completion_tokens=3),
        model="served",
    )


def events(raw: bytes) -> list[Any]:
    out = []
    for block in raw.split(b"\n\n"):
        if block:
            assert block.startswith(b"data: ")
            data = block[len(b"data: ") :]
            out.append(data.decode() if data == b"[DONE]" else orjson.loads(data))
    return out


def test_completion_json_has_openai_shape_and_served_model() -> None:
    body = orjson.loads(
        completion_json(
            Completion("chatcmpl-1", 10, "alias"), "hey", summary(pb.FINISH_REASON_LENGTH)
        )
    )
    assert body["object"] == "chat.completion"
    assert body["model"] == "served"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "hey", "refusal": None}
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}


def test_stream_events_role_then_merged_deltas_then_finish_usage_done() -> None:
    writer = ChatWriter(Completion("chatcmpl-1", 10, "m"), include_usage=True)
    batch = pb.DeltaBatch(deltas=[pb.Delta(content="Hel"), pb.Delta(content="lo")])
    out = events(writer.start() + writer.deltas(batch) + writer.finish(summary()))
    assert out[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert out[1]["choices"][0]["delta"] == {"content": "Hello"}  # one read, one event
    assert out[2]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert out[3]["choices"] == [] and out[3]["usage"]["total_tokens"] == 8
    assert out[4] == "[DONE]"
    assert all(e["usage"] is None for e in out[:3])
    assert {e["id"] for e in out[:4]} == {"chatcmpl-1"}
    assert all(e["object"] == "chat.completion.chunk" for e in out[:4])


def test_stream_without_usage_has_no_usage_key() -> None:
    writer = ChatWriter(Completion("c", 1, "m"), include_usage=False)
    out = events(writer.start() + writer.finish(summary()))
    assert all("usage" not in e for e in out[:-1])
    assert out[-1] == "[DONE]"


def test_error_event_is_one_data_line_in_openai_shape() -> None:
    raw = error_event(ApiError(503, "gone", type="service_unavailable_error", code="x"))
    assert events(raw) == [
        {
            "error": {
                "message": "gone",
                "type": "service_unavailable_error",
                "param": None,
                "code": "x",
            }
        }
    ]
