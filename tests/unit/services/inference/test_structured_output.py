"""response_format -> grammar, strict checking of final text, upstream payloads."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import orjson
import pytest

from core.errors import Kind, ServiceError
from services.inference.constraints import grammar_text, unenforceable_keyword
from services.inference.generation import (
    ChatRequest,
    Delta,
    Event,
    Finish,
    Message,
    ResponseFormat,
    Routed,
    Sampling,
    ToolCall,
    ToolCallDelta,
)
from services.inference.openai_wire.chat import ChatChunks, chat_payload
from services.inference.strict import checked, output_problem

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}


def test_grammar_for_each_format() -> None:
    assert grammar_text(ResponseFormat()) is None
    assert "root" in (grammar_text(ResponseFormat("json_object")) or "")
    schema = grammar_text(ResponseFormat("json_schema", orjson.dumps(SCHEMA).decode()))
    assert schema is not None and "root ::=" in schema
    assert grammar_text(ResponseFormat("grammar", grammar='root ::= "x"')) == 'root ::= "x"'


def test_schema_keywords_a_grammar_cannot_enforce_are_refused() -> None:
    assert unenforceable_keyword(SCHEMA) is None
    nested = {"type": "object", "properties": {"a": {"anyOf": [{"type": "number", "minimum": 1}]}}}
    assert unenforceable_keyword(nested) == "properties/a/anyOf/0/minimum"
    assert unenforceable_keyword({"type": "array", "uniqueItems": True}) == "uniqueItems"
    assert unenforceable_keyword({"$ref": "https://example.com/s.json"}) == "$ref"
    assert unenforceable_keyword({"$defs": {"a": {"type": "string"}}, "$ref": "#/$defs/a"}) is None
    with pytest.raises(ServiceError) as caught:
        grammar_text(ResponseFormat("json_schema", orjson.dumps(nested).decode()))
    assert caught.value.kind == Kind.INVALID_ARGUMENT
    assert caught.value.param == "response_format.json_schema.schema"


def test_output_problem() -> None:
    assert output_problem('{"a": 1}', SCHEMA) is None
    assert "not valid JSON" in (output_problem('{"a": ', SCHEMA) or "")
    assert "at a:" in (output_problem('{"a": "x"}', SCHEMA) or "")
    assert output_problem("{}", SCHEMA) is not None


async def _events(*items: Event | Routed) -> AsyncGenerator[Event | Routed, None]:
    for item in items:
        yield item


async def _drain(events: AsyncGenerator[Event | Routed, None]) -> list[Event | Routed]:
    return [event async for event in events]


def test_strict_check_passes_valid_and_stops_invalid() -> None:
    strict = ResponseFormat("json_schema", orjson.dumps(SCHEMA).decode(), strict=True, name="s")
    good = [
        Routed("m"),
        [Delta(0, '{"a"'), Delta(1, "{")],
        [Delta(0, ": 1}")],
        Finish({0: "stop", 1: "length"}, 1, 2),
    ]
    assert asyncio.run(_drain(checked(_events(*good), strict))) == good
    bad = [Routed("m"), [Delta(0, '{"a": "no"}')], Finish({0: "stop"}, 1, 2)]
    with pytest.raises(ServiceError) as caught:
        asyncio.run(_drain(checked(_events(*bad), strict)))
    assert caught.value.reason == "UPSTREAM_BAD_RESPONSE" and "'s'" in caught.value.message
    loose = ResponseFormat("json_schema", orjson.dumps(SCHEMA).decode(), strict=False)
    assert asyncio.run(_drain(checked(_events(*bad), loose))) == bad


def test_chat_payload_carries_the_new_parameters() -> None:
    sampling = Sampling(
        n=2,
        logprobs=True,
        top_logprobs=3,
        logit_bias=((5, -100.0),),
        response_format=ResponseFormat("json_schema", '{"type":"object"}', True, "o"),
    )
    body = orjson.loads(chat_payload(ChatRequest("m", (Message("user", "x"),), sampling), "up"))
    assert body["n"] == 2 and body["logprobs"] is True and body["top_logprobs"] == 3
    assert body["logit_bias"] == {"5": -100.0}
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "o", "schema": {"type": "object"}, "strict": True},
    }
    plain = orjson.loads(chat_payload(ChatRequest("m", (Message("user", "x"),)), "up"))
    assert not {"n", "logprobs", "logit_bias", "response_format"} & set(plain)
    grammar = Sampling(response_format=ResponseFormat("grammar", grammar="root ::= x"))
    with pytest.raises(ServiceError) as caught:
        chat_payload(ChatRequest("m", (Message("user", "x"),), grammar), "up")
    assert caught.value.param == "response_format"


def test_upstream_logprobs_are_parsed_per_choice() -> None:
    chunks = ChatChunks("m")
    entry = {
        "token": "hi",
        "logprob": -0.25,
        "bytes": [104, 105],
        "top_logprobs": [{"token": "yo", "logprob": -2}],
    }
    event = {
        "choices": [{"index": 1, "delta": {"content": "hi"}, "logprobs": {"content": [entry]}}]
    }
    [delta] = chunks.feed([orjson.dumps(event)])
    assert delta.choice_index == 1 and delta.text == "hi"
    [token] = delta.logprobs
    assert (token.token, token.logprob, token.bytes) == ("hi", -0.25, b"hi")
    assert [(t.token, t.logprob) for t in token.top] == [("yo", -2.0)]


def test_tools_and_tool_messages_go_upstream_as_openai_names_them() -> None:
    request = ChatRequest(
        "m",
        (
            Message("assistant", "", tool_calls=(ToolCall("c1", "f", "{}"),)),
            Message("tool", "42", tool_call_id="c1"),
        ),
        tools_json='[{"type":"function","function":{"name":"f"}}]',
        tool_choice_json='"auto"',
        parallel_tool_calls=True,
    )
    body = orjson.loads(chat_payload(request, "up"))
    assert body["tools"] == [{"type": "function", "function": {"name": "f"}}]
    assert body["tool_choice"] == "auto" and body["parallel_tool_calls"] is True
    assert body["messages"][0] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        ],
    }
    assert body["messages"][1] == {"role": "tool", "content": "42", "tool_call_id": "c1"}


def test_upstream_tool_calls_are_parsed() -> None:
    chunks = ChatChunks("m")
    call = {"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": "{"}}
    event = {
        "choices": [{"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": "tool_calls"}]
    }
    [delta] = chunks.feed([orjson.dumps(event)])
    assert delta.tool_calls == (ToolCallDelta(0, "c1", "f", "{"),)
    assert chunks.finish_reasons == {0: "tool_calls"}
