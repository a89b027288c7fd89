"""OpenAI chat JSON <-> inference protobuf <-> SSE, without any server."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from aqueduct.inference.v1 import inference_pb2 as pb

from edge.chat_render import ChatWriter, completion_json
from edge.chat_request import parse_chat_request
from edge.errors import ApiError
from edge.rendering import ChoiceText, Completion, error_event, gather

BASE: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}

TOOLS: Any = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]


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
        ({**BASE, "logprobs": 1}, "logprobs"),
        ({**BASE, "top_logprobs": 1}, "top_logprobs"),
        ({**BASE, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({**BASE, "n": 0}, "n"),
        ({**BASE, "n": 129}, "n"),
        ({**BASE, "logit_bias": {"a": 1}}, "logit_bias"),
        ({**BASE, "logit_bias": {"1": -101}}, "logit_bias"),
        ({**BASE, "logit_bias": {"1": "x"}}, "logit_bias"),
        ({**BASE, "response_format": "json"}, "response_format"),
        ({**BASE, "response_format": {"type": "yaml"}}, "response_format.type"),
        ({**BASE, "response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        (
            {**BASE, "response_format": {"type": "json_schema", "json_schema": {"schema": {}}}},
            "response_format.json_schema.name",
        ),
        (
            {
                **BASE,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": 5}},
                },
            },
            "response_format.json_schema.schema",
        ),
        ({**BASE, "response_format": {"type": "grammar"}}, "response_format.grammar"),
        ({**BASE, "tools": {}}, "tools"),
        ({**BASE, "tools": [{"type": "code"}]}, "tools[0]"),
        ({**BASE, "tools": [{"type": "function", "function": {}}]}, "tools[0].function.name"),
        ({**BASE, "tool_choice": "auto"}, "tool_choice"),
        ({**BASE, "tool_choice": "sometimes", "tools": TOOLS}, "tool_choice"),
        ({**BASE, "parallel_tool_calls": 1}, "parallel_tool_calls"),
        ({**BASE, "functions": [{"name": "f"}]}, "functions"),
        (
            {**BASE, "messages": [{"role": "tool", "content": "x"}]},
            "messages[0].tool_call_id",
        ),
        (
            {**BASE, "messages": [{"role": "assistant", "tool_calls": [{"id": "c"}]}]},
            "messages[0].tool_calls[0]",
        ),
        (
            {**BASE, "response_format": {"type": "grammar", "grammar": "x", "syntax": "lark"}},
            "response_format.syntax",
        ),
    ],
)
def test_invalid_fields_are_named(body: dict[str, Any], param: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_chat_request(body)
    assert caught.value.status == 400
    assert caught.value.param == param


@pytest.mark.parametrize(
    ("field", "value", "bound"),
    [
        ("seed", 2**63, "at most 9223372036854775807"),
        ("seed", -(2**63) - 1, "at least -9223372036854775808"),
        ("max_tokens", 2**63, "at most 9223372036854775807"),
        ("max_tokens", 0, "at least 1"),
    ],
)
def test_out_of_range_integers_name_the_bound_they_cross(
    field: str, value: int, bound: str
) -> None:
    with pytest.raises(ApiError) as caught:
        parse(**{field: value})
    assert caught.value.param == field
    assert bound in caught.value.message


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
            Completion("chatcmpl-1", 10, "alias"),
            {0: ChoiceText(["he", "y"], [])},
            summary(pb.FINISH_REASON_LENGTH),
            logprobs=False,
        )
    )
    assert body["object"] == "chat.completion"
    assert body["model"] == "served"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "hey", "refusal": None}
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}


def test_stream_events_role_then_each_delta_then_finish_usage_done() -> None:
    writer = ChatWriter(Completion("chatcmpl-1", 10, "m"), include_usage=True)
    batch = pb.DeltaBatch(
        deltas=[pb.Delta(content="Hel"), pb.Delta(content=""), pb.Delta(content="lo")]
    )
    out = events(writer.start() + writer.deltas(batch) + writer.finish(summary()))
    assert out[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    # One event per delta, as the backend cut them; a held-back (empty) one shows nothing.
    assert out[1]["choices"][0]["delta"] == {"content": "Hel"}
    assert out[2]["choices"][0]["delta"] == {"content": "lo"}
    assert out[3]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert out[4]["choices"] == [] and out[4]["usage"]["total_tokens"] == 8
    assert out[5] == "[DONE]"
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


def test_tools_and_tool_messages_reach_the_request() -> None:
    call = parse_chat_request(
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": "x"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{}"},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "42"},
            ],
            "tools": TOOLS,
            "tool_choice": "required",
            "parallel_tool_calls": True,
        }
    )
    r = call.request
    assert orjson.loads(r.tools_json) == TOOLS and orjson.loads(r.tool_choice_json) == "required"
    assert r.HasField("parallel_tool_calls") and r.parallel_tool_calls
    assert [(c.id, c.name, c.arguments) for c in r.messages[1].tool_calls] == [("c1", "f", "{}")]
    assert r.messages[2].tool_call_id == "c1"


def test_tool_calls_render_in_messages_and_chunks() -> None:
    batch = pb.DeltaBatch(
        deltas=[
            pb.Delta(tool_calls=[pb.ToolCallDelta(index=0, id="c1", name="f", arguments='{"a"')]),
            pb.Delta(tool_calls=[pb.ToolCallDelta(index=0, arguments=": 1}")]),
        ]
    )
    choices: dict[int, ChoiceText] = {}
    gather(choices, batch)
    ends = pb.Summary(
        choice_ends=[pb.ChoiceEnd(choice_index=0, finish_reason=pb.FINISH_REASON_TOOL_CALLS)]
    )
    body = orjson.loads(completion_json(Completion("c", 1, "m"), choices, ends, logprobs=False))
    [choice] = body["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    assert choice["message"]["tool_calls"] == [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
    ]
    writer = ChatWriter(Completion("c", 1, "m"), include_usage=False)
    first = pb.DeltaBatch(
        deltas=[pb.Delta(tool_calls=[pb.ToolCallDelta(index=0, id="c1", name="f")])]
    )
    later = pb.DeltaBatch(deltas=[pb.Delta(tool_calls=[pb.ToolCallDelta(index=0, arguments="{}")])])
    out = events(writer.deltas(first) + writer.deltas(later))
    assert out[0]["choices"][0]["delta"]["tool_calls"] == [
        {"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": ""}}
    ]
    assert out[1]["choices"][0]["delta"]["tool_calls"] == [
        {"index": 0, "function": {"arguments": "{}"}}
    ]


def test_new_sampling_fields_reach_the_request() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    call = parse_chat_request(
        {
            **BASE,
            "n": 3,
            "logprobs": True,
            "top_logprobs": 4,
            "logit_bias": {"42": -100, "7": 5.5},
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "thing", "schema": schema, "strict": True},
            },
        }
    )
    s = call.request.sampling
    assert (s.n, s.logprobs, s.top_logprobs) == (3, True, 4)
    assert dict(s.logit_bias) == {42: -100.0, 7: 5.5}
    f = s.response_format
    assert f.type == pb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA and f.strict and f.name == "thing"
    assert orjson.loads(f.json_schema) == schema
    grammar = parse_chat_request({**BASE, "response_format": {"type": "grammar", "grammar": "g"}})
    assert grammar.request.sampling.response_format.grammar == "g"
    assert grammar.request.sampling.response_format.grammar_syntax == "gbnf"


def test_completion_json_renders_every_choice_with_logprobs() -> None:
    entry = pb.TokenLogprob(
        token="é", logprob=-0.5, bytes="é".encode(), top_logprobs=[pb.TopLogprob(token="é")]
    )
    two = pb.Summary(
        choice_ends=[
            pb.ChoiceEnd(choice_index=0, finish_reason=pb.FINISH_REASON_STOP),
            pb.ChoiceEnd(choice_index=1, finish_reason=pb.FINISH_REASON_LENGTH),
        ],
        usage=pb.Usage(prompt_tokens=1, completion_tokens=2),
    )
    body = orjson.loads(
        completion_json(
            Completion("c", 1, "m"),
            {1: ChoiceText(["b"], []), 0: ChoiceText(["é"], [entry])},
            two,
            logprobs=True,
        )
    )
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert [c["finish_reason"] for c in body["choices"]] == ["stop", "length"]
    content = body["choices"][0]["logprobs"]["content"]
    assert content == [
        {
            "token": "é",
            "logprob": -0.5,
            "bytes": [195, 169],
            "top_logprobs": [{"token": "é", "logprob": 0.0, "bytes": []}],
        }
    ]
    assert body["choices"][1]["logprobs"] == {"content": [], "refusal": None}


def test_stream_with_n_starts_every_choice_and_splits_deltas() -> None:
    writer = ChatWriter(Completion("c", 1, "m"), include_usage=False, n=2, logprobs=True)
    batch = pb.DeltaBatch(
        deltas=[
            pb.Delta(choice_index=1, content="a"),
            pb.Delta(choice_index=0, content="b", logprobs=[pb.TokenLogprob(token="b")]),
        ]
    )
    out = events(writer.start() + writer.deltas(batch))
    assert [e["choices"][0]["index"] for e in out] == [0, 1, 1, 0]
    assert out[2]["choices"][0]["logprobs"] == {"content": [], "refusal": None}
    assert out[3]["choices"][0]["logprobs"]["content"][0]["token"] == "b"


def test_named_tool_choice_is_accepted() -> None:
    named = {"type": "function", "function": {"name": "f"}}
    call = parse_chat_request({**BASE, "tools": TOOLS, "tool_choice": named})
    assert orjson.loads(call.request.tool_choice_json) == named
    with pytest.raises(ApiError) as caught:
        parse_chat_request({**BASE, "tools": TOOLS, "tool_choice": {"type": "function"}})
    assert caught.value.param == "tool_choice"


def test_a_schema_nested_too_deeply_is_a_400() -> None:
    schema: dict[str, Any] = {"type": "object"}
    for _ in range(900):
        schema = {"type": "object", "properties": {"a": schema}}
    body = {
        **BASE,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
    }
    with pytest.raises(ApiError) as caught:
        parse_chat_request(body)
    assert caught.value.param == "response_format.json_schema.schema"


def test_tools_nested_too_deeply_are_a_400() -> None:
    deep: dict[str, Any] = {}
    for _ in range(400):
        deep = {"a": deep}
    tools = [{"type": "function", "function": {"name": "f", "parameters": deep}}]
    with pytest.raises(ApiError) as caught:
        parse_chat_request({**BASE, "tools": tools})
    assert caught.value.param == "tools"


@pytest.mark.parametrize("include_usage", [False, True])
def test_text_deltas_from_the_template_are_the_bytes_the_general_path_makes(
    include_usage: bool,
) -> None:
    texts = ["plain", 'quote " and \\ backslash', "new\nline\ttab", "ünïcødé ✓ 🚀", "\x00\x1f", ""]
    meta = Completion("chatcmpl-1", 10, "m")
    fast = ChatWriter(meta, include_usage)
    batch = pb.DeltaBatch(
        deltas=[pb.Delta(choice_index=i % 2, content=t) for i, t in enumerate(texts)]
    )
    general = ChatWriter(meta, include_usage)
    expected = b"".join(
        general._chunk(
            [{"index": i % 2, "delta": {"content": t}, "logprobs": None, "finish_reason": None}]
        )
        for i, t in enumerate(texts)
        if t
    )
    assert fast.deltas(batch) == expected
    meta.model, meta.provider = "served", "acme"  # named by the first batch: templates follow
    expected = general._chunk(
        [{"index": 0, "delta": {"content": "x"}, "logprobs": None, "finish_reason": None}]
    )
    assert fast.deltas(pb.DeltaBatch(deltas=[pb.Delta(content="x")])) == expected
