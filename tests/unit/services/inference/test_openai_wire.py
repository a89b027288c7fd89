"""The OpenAI wire format as an upstream speaks it: bodies out, chunks and errors in."""

from __future__ import annotations

import base64
import struct
from dataclasses import replace

import orjson
import pytest

from core.errors import Kind, ServiceError
from services.inference.embedding import EmbedRequest
from services.inference.generation import (
    AudioInput,
    ChatRequest,
    CompletionRequest,
    Delta,
    ImageInput,
    Message,
    Sampling,
    TokenLogprob,
    ToolCallDelta,
)
from services.inference.openai_wire.chat import ChatChunks, chat_payload
from services.inference.openai_wire.completions import completion_payload
from services.inference.openai_wire.embeddings import embeddings_payload, parse_embeddings
from services.inference.openai_wire.errors import rejection

REQUEST = ChatRequest(
    "m", (Message("system", "Be brief."), Message("user", "Hi", "ann")), Sampling(max_tokens=5)
)


def chunk(content: str | None = None, finish: str | None = None, **extra: object) -> bytes:
    choice: dict[str, object] = {"index": 0, "delta": {"content": content} if content else {}}
    if finish:
        choice["finish_reason"] = finish
    return orjson.dumps({"choices": [choice], **extra})


def test_chat_payload_streams_with_usage_and_only_set_parameters() -> None:
    body = orjson.loads(chat_payload(REQUEST, "served"))
    assert body == {
        "model": "served",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi", "name": "ann"},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 5,
    }


def test_a_whole_request_asks_for_one_json_answer() -> None:
    body = orjson.loads(chat_payload(replace(REQUEST, whole=True), "served"))
    assert body["stream"] is False and "stream_options" not in body
    prompt = CompletionRequest("m", ("Hi",), Sampling(max_tokens=5), whole=True)
    body = orjson.loads(completion_payload(prompt, "served"))
    assert body["stream"] is False and "stream_options" not in body


def test_chunks_of_one_read_stay_one_delta_each() -> None:
    chunks = ChatChunks("m")
    assert chunks.feed([chunk("Hel"), chunk("lo")]) == [
        Delta(0, "Hel", tokens=1),
        Delta(0, "lo", tokens=1),
    ]
    assert chunks.feed([chunk(finish="length")]) == []
    chunks.feed(
        [orjson.dumps({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2}})]
    )
    assert chunks.feed([b"[DONE]"]) == [] and chunks.done
    finish = chunks.finish(REQUEST)
    assert (finish.finish_reasons, finish.prompt_tokens, finish.completion_tokens) == (
        {0: "length"},
        9,
        2,
    )


def test_usage_is_estimated_when_missing() -> None:
    chunks = ChatChunks("m")
    chunks.feed([chunk("a" * 40), chunk("b"), chunk(finish="function_call"), b"[DONE]"])
    finish = chunks.finish(REQUEST)
    assert finish.finish_reasons == {0: "stop"}  # reasons we do not model become stop
    assert finish.completion_tokens == 11  # 41 bytes / 4, rounded up
    assert finish.prompt_tokens > 2 * 4


@pytest.mark.parametrize(
    ("events", "problem"),
    [
        ([b"{nope"], "not valid JSON"),
        ([b"[1, 2]"], "not a JSON object"),
        ([orjson.dumps({"choices": "x"})], "'choices' is not an array"),
    ],
)
def test_garbage_events_are_bad_responses(events: list[bytes], problem: str) -> None:
    with pytest.raises(ServiceError) as caught:
        ChatChunks("m").feed(events)
    assert caught.value.reason == "UPSTREAM_BAD_RESPONSE"
    assert problem in caught.value.message


def test_an_error_event_mid_stream_is_an_upstream_error() -> None:
    with pytest.raises(ServiceError) as caught:
        ChatChunks("m").feed([orjson.dumps({"error": {"message": "GPU on fire"}})])
    assert caught.value.reason == "UPSTREAM_ERROR" and "GPU on fire" in caught.value.message


def test_a_cut_stream_is_a_bad_response() -> None:
    chunks = ChatChunks("m")
    chunks.feed([chunk("partial")])
    with pytest.raises(ServiceError) as caught:
        chunks.finish(REQUEST)
    assert "ended before the completion finished" in caught.value.message
    with pytest.raises(ServiceError) as nothing:
        ChatChunks("m").finish(REQUEST)
    assert "not an OpenAI event stream" in nothing.value.message


def test_a_whole_completion_is_accepted() -> None:
    chunks = ChatChunks("m")
    body = {
        "choices": [{"index": 0, "message": {"content": "hey"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1},
    }
    assert chunks.completion(orjson.dumps(body)) == [Delta(0, "hey", tokens=1)]
    assert chunks.finish(REQUEST).prompt_tokens == 3


def test_a_whole_completion_keeps_every_choice_tool_call_and_logprob() -> None:
    chunks = ChatChunks("m")
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
    logprobs = {"content": [{"token": "x", "logprob": -0.25, "bytes": [120], "top_logprobs": []}]}
    body = {
        "choices": [
            {
                "index": 0,
                "message": {"content": "x"},
                "logprobs": logprobs,
                "finish_reason": "stop",
            },
            {
                "index": 1,
                "message": {"content": None, "tool_calls": [call]},
                "finish_reason": "tool_calls",
            },
        ],
        "usage": {"prompt_tokens": 7, "completion_tokens": 12},
    }
    assert chunks.completion(orjson.dumps(body)) == [
        Delta(0, "x", (TokenLogprob("x", -0.25, b"x"),), tokens=1),
        Delta(1, "", tool_calls=(ToolCallDelta(0, "c1", "f", '{"a": 1}'),)),
    ]
    finish = chunks.finish(REQUEST)
    assert (finish.finish_reasons, finish.prompt_tokens, finish.completion_tokens) == (
        {0: "stop", 1: "tool_calls"},
        7,
        12,
    )


@pytest.mark.parametrize(
    ("status", "kind", "reason"),
    [
        (400, Kind.INVALID_ARGUMENT, "UPSTREAM_REJECTED"),
        (401, Kind.UNAUTHENTICATED, "UPSTREAM_REJECTED"),
        (409, Kind.INVALID_ARGUMENT, "UPSTREAM_REJECTED"),
        (422, Kind.FAILED_PRECONDITION, "UPSTREAM_REJECTED"),
        (429, Kind.RESOURCE_EXHAUSTED, "UPSTREAM_RATE_LIMITED"),
        (500, Kind.UNAVAILABLE, "UPSTREAM_ERROR"),
        (502, Kind.UNAVAILABLE, "UPSTREAM_ERROR"),
        (503, Kind.UNAVAILABLE, "UPSTREAM_UNAVAILABLE"),
        (504, Kind.DEADLINE_EXCEEDED, "UPSTREAM_TIMEOUT"),
    ],
)
def test_rejections_by_status(status: int, kind: Kind, reason: str) -> None:
    body = orjson.dumps({"error": {"message": "nope", "param": "messages"}})
    error = rejection(status, body, None, "m")
    assert (error.kind, error.reason) == (kind, reason)
    assert "nope" in error.message
    if status < 500:
        assert error.message == "nope" and error.param == "messages"
        assert error.metadata["http_status"] == str(status)


def test_429_carries_retry_after_in_seconds() -> None:
    assert rejection(429, b"", "12", "m").metadata["retry_after_s"] == "12"
    date = rejection(429, b"", "Thu, 01 Jan 2099 00:00:00 GMT", "m")
    assert float(date.metadata["retry_after_s"]) > 1e9
    assert "retry_after_s" not in rejection(429, b"", "soon", "m").metadata


def test_plain_text_error_bodies_become_the_message() -> None:
    assert rejection(400, b"model\nnot loaded", None, "m").message == "model not loaded"


def test_embeddings_payload_and_answer() -> None:
    request = EmbedRequest("m", ("a", (1, 2)), dimensions=4, input_type="query")
    body = orjson.loads(embeddings_payload(request, "served"))
    assert body == {
        "model": "served",
        "input": ["a", [1, 2]],
        "encoding_format": "float",
        "dimensions": 4,
        "input_type": "query",
    }
    packed = base64.b64encode(struct.pack("<2f", 0.5, -1.0)).decode()
    answer = {
        "data": [{"index": 1, "embedding": packed}, {"index": 0, "embedding": [1, 2]}],
        "usage": {"prompt_tokens": 4},
    }
    matrix, tokens = parse_embeddings(orjson.dumps(answer), 2, "m")
    assert [row.tolist() for row in matrix] == [[1.0, 2.0], [0.5, -1.0]] and tokens == 4


@pytest.mark.parametrize(
    "answer",
    [
        {"data": [{"embedding": [1]}]},  # one short
        {"data": [{"embedding": [1]}, {"embedding": [1, 2]}]},  # ragged
        {"data": [{"embedding": ["x"]}, {"embedding": [1]}]},
        {"data": [{"index": 0, "embedding": [1]}, {"index": 0, "embedding": [1]}]},
        {"data": [{"embedding": "!!"}, {"embedding": [1]}]},
    ],
)
def test_bad_embeddings_answers(answer: dict[str, object]) -> None:
    with pytest.raises(ServiceError) as caught:
        parse_embeddings(orjson.dumps(answer), 2, "m")
    assert caught.value.reason == "UPSTREAM_BAD_RESPONSE"


def test_parts_go_upstream_as_openai_parts_with_bytes_base64_again() -> None:
    png, wav = b"\x89PNG\r\n\x1a\n\x00\xff", b"RIFF\x00\x00\x00\x00WAVE"
    parts = (
        "Look",
        ImageInput(url="http://127.0.0.1:9/a.png", detail="low"),
        ImageInput(data=png, media_type="image/png", filename="cat.png"),
        AudioInput(wav, "wav"),
    )
    request = ChatRequest("m", (Message("user", "Look", parts=parts),))
    (message,) = orjson.loads(chat_payload(request, "up"))["messages"]
    assert message == {
        "role": "user",
        "content": [
            {"type": "text", "text": "Look"},
            {
                "type": "image_url",
                "image_url": {"url": "http://127.0.0.1:9/a.png", "detail": "low"},
            },
            {
                "type": "image_url",
                "image_url": {"url": "data:image/png;base64," + base64.b64encode(png).decode()},
            },
            {
                "type": "input_audio",
                "input_audio": {"data": base64.b64encode(wav).decode(), "format": "wav"},
            },
        ],
    }
