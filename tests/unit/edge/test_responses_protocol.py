"""Responses requests -> chat generation: what reaches inference, and errors
named by the field the client sent."""

from __future__ import annotations

from typing import Any

import pytest
from aqueduct.inference.v1 import inference_pb2 as pb

from edge.chat_request import FilePart
from edge.errors import ApiError
from edge.responses_request import input_items, parse_responses_request


def parse(**body: Any) -> Any:
    return parse_responses_request({"model": "m", **body})


def error(**body: Any) -> ApiError:
    with pytest.raises(ApiError) as caught:
        parse(**body)
    return caught.value


def test_instructions_and_string_input_become_developer_and_user_messages() -> None:
    call = parse(instructions="Be brief.", input="Hi", max_output_tokens=5, temperature=0.5)
    assert [(m.role, m.content) for m in call.request.messages] == [
        ("developer", "Be brief."),
        ("user", "Hi"),
    ]
    assert call.request.sampling.max_tokens == 5
    assert call.request.sampling.temperature == 0.5
    assert call.store is True and call.echo["tools"] == [] and call.echo["top_p"] == 1.0


def test_function_calls_join_the_assistant_turn_and_outputs_become_tool_messages() -> None:
    call = parse(
        input=[
            {"role": "user", "content": "Weather?"},
            {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "w", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sun"},
            {
                "type": "function_call_output",
                "call_id": "c2",
                "output": [{"type": "input_text", "text": "rain"}],
            },
        ]
    )
    messages = call.request.messages
    assert [m.role for m in messages] == ["user", "assistant", "tool", "tool"]
    assert [c.id for c in messages[1].tool_calls] == ["c1", "c2"]
    assert (messages[3].tool_call_id, messages[3].content) == ("c2", "rain")


def test_text_format_json_schema_is_chats_response_format() -> None:
    call = parse(
        input="x",
        text={"format": {"type": "json_schema", "name": "p", "schema": {"type": "object"}}},
    )
    fmt = call.request.sampling.response_format
    assert fmt.type == pb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA and fmt.name == "p"


def test_input_file_is_a_file_part_named_by_its_input_path() -> None:
    call = parse(
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "Read:"},
                    {"type": "input_file", "file_id": "file-abc"},
                ],
            }
        ]
    )
    (pending,) = call.pending
    part = pending.segments[1]
    assert isinstance(part, FilePart)
    assert (part.file_id, part.param) == ("file-abc", "input[0].content[1]")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "x", "seed": 1}, "seed"),
        ({"input": "x", "tools": [{"type": "function", "name": "bad name"}]}, "tools[0].name"),
        ({"input": "x", "tool_choice": "sometimes"}, "tool_choice"),
        ({"input": "x", "temperature": 3}, "temperature"),
        (
            {"input": "x", "text": {"format": {"type": "json_schema", "schema": {}}}},
            "text.format.name",
        ),
        ({"input": [{"role": "critic", "content": "x"}]}, "input[0].role"),
        ({"input": [{"role": "user", "content": "x", "name": "n"}]}, "input[0].name"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file"}]}]},
            "input[0].content[0]",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_audio"}]}]},
            "input[0].content[0].type",
        ),
        ({"input": "x", "instructions": ["a"]}, "instructions"),
        ({"input": "x", "text": {"verbosity": "low"}}, "text.verbosity"),
        ({"input": "x", "truncation": "auto"}, "truncation"),
        ({"input": "x", "include": ["message.output_text.logprobs"]}, "include"),
    ],
)
def test_errors_name_the_field_sent(body: dict[str, Any], param: str) -> None:
    found = error(**body)
    assert found.status == 400
    assert found.param == param, found.message
    assert param in found.message


def test_stored_input_items_get_types_ids_and_parts() -> None:
    items = input_items(
        [
            {"role": "assistant", "content": "Ok."},
            {"type": "function_call_output", "call_id": "c", "output": "x"},
        ]
    )
    assert items[0]["type"] == "message" and items[0]["id"].startswith("msg_")
    assert items[0]["content"] == [
        {"type": "output_text", "text": "Ok.", "annotations": [], "logprobs": []}
    ]
    assert items[1]["id"].startswith("fco_")
    assert input_items("Hi")[0]["content"] == [{"type": "input_text", "text": "Hi"}]
