"""The new chat parameters on an OpenAI-compatible upstream (tests/fake_upstream.py):
passed through as OpenAI names them, and strict json_schema output checked."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.fake_upstream import FakeUpstream, Reply
from tests.stack import Stack

HI: Any = [{"role": "user", "content": "Say hi."}]
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
STRICT: Any = {
    "type": "json_schema",
    "json_schema": {"name": "thing", "schema": SCHEMA, "strict": True},
}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    running = FakeUpstream("s").start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, fake: FakeUpstream) -> Iterator[Stack]:
    data_dir = Path(tmp_path_factory.mktemp("structured"))
    config = data_dir / "models.yaml"
    config.write_text(
        f"""
models:
  - name: up
    backend: openai
    owned_by: fake-lab
    timeout_s: 10
    upstreams: [{{url: "{fake.url}", model: served-up}}]
"""
    )
    running = Stack(data_dir=data_dir, models_config=config).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(stack: Stack) -> openai.OpenAI:
    return stack.sdk(timeout=30)


@pytest.fixture(autouse=True)
def fresh(fake: FakeUpstream) -> None:
    fake.wait_for(lambda: fake.active == 0)
    fake.reset()


def test_parameters_reach_the_upstream_and_valid_output_passes(
    client: openai.OpenAI, fake: FakeUpstream
) -> None:
    fake.queue(Reply.stream('{"a"', ": 1}"))
    answer = client.chat.completions.create(
        model="up",
        messages=HI,
        n=1,
        logprobs=True,
        top_logprobs=2,
        logit_bias={"17": -5},
        response_format=STRICT,
        seed=3,
    )
    assert answer.choices[0].message.content == '{"a": 1}'
    sent = fake.received[-1]
    assert sent["model"] == "served-up"
    assert sent["logprobs"] is True and sent["top_logprobs"] == 2
    assert sent["logit_bias"] == {"17": -5.0} and sent["seed"] == 3
    assert sent["response_format"] == STRICT


def test_strict_schema_violation_is_an_error_not_an_answer(
    client: openai.OpenAI, fake: FakeUpstream
) -> None:
    fake.queue(Reply.stream('{"a": "one"}'))
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="up", messages=HI, response_format=STRICT)
    assert caught.value.status_code == 502
    assert "strict JSON schema 'thing'" in caught.value.message
    fake.queue(Reply.stream("{", '"a": "one"}'))
    with pytest.raises(openai.APIError) as streamed:
        for _ in client.chat.completions.create(
            model="up", messages=HI, response_format=STRICT, stream=True
        ):
            pass
    assert "strict JSON schema" in streamed.value.message


def test_not_strict_output_is_returned_as_it_is(client: openai.OpenAI, fake: FakeUpstream) -> None:
    fake.queue(Reply.stream('{"a": "one"}'))
    loose: Any = {"type": "json_schema", "json_schema": {"name": "thing", "schema": SCHEMA}}
    answer = client.chat.completions.create(model="up", messages=HI, response_format=loose)
    assert answer.choices[0].message.content == '{"a": "one"}'


def test_what_upstreams_cannot_take_is_400(client: openai.OpenAI, fake: FakeUpstream) -> None:
    with pytest.raises(openai.BadRequestError) as grammar:
        client.chat.completions.create(
            model="up",
            messages=HI,
            response_format={"type": "grammar", "grammar": 'root ::= "x"'},  # type: ignore[arg-type,misc]
        )
    assert grammar.value.param == "response_format"
    assert fake.requests == 0


def test_completions_reach_the_upstream(client: openai.OpenAI, fake: FakeUpstream) -> None:
    fake.queue(Reply.text("Hel", "lo"))
    answer = client.completions.create(
        model="up", prompt=["a", "b"], max_tokens=5, suffix="z", echo=True, n=2, seed=1
    )
    assert answer.object == "text_completion" and answer.choices[0].text == "Hello"
    assert answer.model == "up"
    assert answer.model_extra is not None and answer.model_extra["provider"] == "fake-lab"
    sent = fake.received[-1]
    assert fake.paths[-1].endswith("/completions") and "chat" not in fake.paths[-1]
    assert sent["prompt"] == ["a", "b"] and sent["suffix"] == "z" and sent["echo"] is True
    assert sent["n"] == 2 and sent["seed"] == 1 and sent["max_tokens"] == 5
    assert sent["stream"] is False and "stream_options" not in sent  # whole: one JSON answer
    fake.queue(Reply.text("Hel", "lo"))
    chunks = list(
        client.completions.create(
            model="up",
            prompt=[1, 2],
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "Hello"
    assert fake.received[-1]["prompt"] == [1, 2]
    assert chunks[-1].usage is not None
    assert {(c.model_extra or {}).get("provider") for c in chunks} == {"fake-lab"}


def test_completions_best_of_asks_the_upstream_for_json_and_keeps_logprobs(
    client: openai.OpenAI, fake: FakeUpstream
) -> None:
    fake.queue(Reply.text("Hel", "lo"))
    answer = client.completions.create(model="up", prompt="a", best_of=3, logprobs=1, max_tokens=5)
    sent = fake.received[-1]
    assert sent["best_of"] == 3 and sent["stream"] is False and "stream_options" not in sent
    assert sent["logprobs"] == 1
    lp = answer.choices[0].logprobs
    assert lp is not None and lp.tokens == ["Hel", "lo"] and lp.token_logprobs == [-0.5, -0.5]
    assert lp.top_logprobs == [{"Hel": -0.5}, {"lo": -0.5}] and lp.text_offset == [0, 3]


TOOLS: Any = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
CALL = (("call_1", "get_weather", ('{"ci', 'ty": "Paris"}')),)


def test_tools_pass_through_and_tool_calls_come_back(
    client: openai.OpenAI, fake: FakeUpstream
) -> None:
    fake.queue(Reply.stream(*(), tool_calls=CALL, finish="tool_calls"))
    answer = client.chat.completions.create(
        model="up",
        messages=HI,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False,
    )
    sent = fake.received[-1]
    assert sent["tools"] == TOOLS
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert sent["parallel_tool_calls"] is False
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls or []
    assert call.id == "call_1" and call.type == "function"
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert call.function.arguments == '{"city": "Paris"}'  # type: ignore[union-attr]


def test_tool_calls_stream_in_openai_chunks_and_results_go_back(
    client: openai.OpenAI, fake: FakeUpstream
) -> None:
    fake.queue(Reply.stream(*(), tool_calls=CALL, finish="tool_calls"))
    chunks = list(client.chat.completions.create(model="up", messages=HI, tools=TOOLS, stream=True))
    parts = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert parts[0].id == "call_1" and parts[0].function.name == "get_weather"  # type: ignore[union-attr]
    assert "".join(p.function.arguments or "" for p in parts) == '{"city": "Paris"}'  # type: ignore[union-attr]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    fake.queue(Reply.stream("Sunny."))
    follow_up: Any = [
        *HI,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    answer = client.chat.completions.create(model="up", messages=follow_up, tools=TOOLS)
    assert answer.choices[0].message.content == "Sunny."
    sent = fake.received[-1]["messages"]
    assert sent[1]["tool_calls"][0]["function"]["arguments"] == '{"city": "Paris"}'
    assert sent[1]["content"] is None
    assert sent[2] == {"role": "tool", "content": "sunny", "tool_call_id": "call_1"}
