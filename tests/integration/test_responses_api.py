"""The Responses API (`/v1/responses`) end to end: the official SDK against the
bundled model and a fake upstream, answers checked against OpenAI's schemas."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.admin_api import create_key, usage
from tests.fake_upstream import FakeUpstream, Reply
from tests.openai_schemas import problems
from tests.stack import ADMIN_KEY, Stack

LOCAL = "smollm2-135m-instruct"
FAKE = "fake"
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}
EVENT_SCHEMAS = {
    "response.created": "ResponseCreatedEvent",
    "response.in_progress": "ResponseInProgressEvent",
    "response.output_item.added": "ResponseOutputItemAddedEvent",
    "response.content_part.added": "ResponseContentPartAddedEvent",
    "response.output_text.delta": "ResponseTextDeltaEvent",
    "response.output_text.done": "ResponseTextDoneEvent",
    "response.content_part.done": "ResponseContentPartDoneEvent",
    "response.output_item.done": "ResponseOutputItemDoneEvent",
    "response.function_call_arguments.delta": "ResponseFunctionCallArgumentsDeltaEvent",
    "response.function_call_arguments.done": "ResponseFunctionCallArgumentsDoneEvent",
    "response.completed": "ResponseCompletedEvent",
    "response.incomplete": "ResponseIncompleteEvent",
    "error": "ResponseErrorEvent",
}


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream("responses").start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def stack(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = Path(tmp_path_factory.mktemp("responses"))
    config = root / "models.yaml"
    config.write_text(
        f"models:\n  - name: {FAKE}\n    backend: openai\n"
        f'    upstreams: [{{url: "{upstream.url}"}}]\n'
        f"  - name: {LOCAL}\n    backend: local\n"
    )
    running = Stack(data_dir=root, models_config=config).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(stack: Stack) -> openai.OpenAI:
    return stack.sdk()


@pytest.fixture(scope="module")
def http(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=stack.base_url, headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=60
    ) as session:
        yield session


def conforms(name: str, instance: object) -> None:
    found = problems(name, instance)
    assert not found, f"{name}: {found}\n{orjson.dumps(instance).decode()[:2000]}"


def raw_events(response: httpx.Response) -> list[dict[str, Any]]:
    """Each SSE event's data, checked to carry its `event:` name as its `type`."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    found = []
    for block in response.text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        data = orjson.loads(lines["data"])
        assert lines["event"] == data["type"]
        found.append(data)
    return found


# --- non-streaming, on the bundled model --------------------------------------------------


def test_string_input_with_instructions_on_the_local_model(
    client: openai.OpenAI, http: httpx.Client
) -> None:
    response = client.responses.create(
        model=LOCAL,
        instructions="You are terse.",
        input="Say hello.",
        max_output_tokens=12,
        temperature=0,
        metadata={"case": "plain"},
    )
    assert response.object == "response"
    assert response.id.startswith("resp_")
    assert response.status in ("completed", "incomplete")
    assert response.model == LOCAL
    assert response.output_text
    assert response.instructions == "You are terse."
    assert response.metadata == {"case": "plain"}
    usage = response.usage
    assert usage is not None and usage.input_tokens > 0 and 0 < usage.output_tokens <= 12
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    raw = http.post(
        "/v1/responses",
        json={"model": LOCAL, "input": "Say hello.", "max_output_tokens": 8, "temperature": 0},
    )
    assert raw.status_code == 200, raw.text
    assert raw.status_code == 200, raw.text
    conforms("Response", raw.json())


def test_bare_route_and_message_items(stack: Stack, http: httpx.Client) -> None:
    answer = http.post(
        f"{stack.base_url}/responses",
        json={
            "model": LOCAL,
            "input": [
                {"role": "system", "content": "Answer in one word."},
                {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "Name a colour."}],
                },
            ],
            "max_output_tokens": 6,
        },
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    conforms("Response", body)
    assert body["output"][0]["type"] == "message"
    assert body["output"][0]["content"][0]["type"] == "output_text"


def test_max_output_tokens_makes_an_incomplete_response(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=LOCAL, input="Write a long story about a dragon.", max_output_tokens=3
    )
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output[0].status == "incomplete"  # type: ignore[union-attr]
    assert response.usage is not None and response.usage.output_tokens == 3


def test_json_schema_output_on_the_local_model_parses(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    response = client.responses.create(
        model=LOCAL,
        input="Describe a person as JSON.",
        max_output_tokens=60,
        temperature=0,  # sampled, one CI answer was not JSON: cut at 60 tokens, still open
        text={
            "format": {"type": "json_schema", "name": "person", "schema": schema, "strict": True}
        },
    )
    assert response.status == "completed"
    person = orjson.loads(response.output_text)
    assert set(person) == {"name", "age"} and isinstance(person["age"], int)
    assert response.text.format.type == "json_schema"  # type: ignore[union-attr]


# --- tools and files, through the fake upstream -----------------------------------------


def test_function_tool_round_trip(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.queue(
        Reply.stream("", tool_calls=(("call_1", "get_weather", ('{"city":', ' "Oslo"}')),))
    )
    first = client.responses.create(model=FAKE, input="Weather in Oslo?", tools=[WEATHER_TOOL])
    sent = upstream.received[-1]
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {k: v for k, v in WEATHER_TOOL.items() if k != "type"},
        }
    ]
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1
    call = calls[0]
    assert (call.call_id, call.name, call.arguments) == (
        "call_1",
        "get_weather",
        '{"city": "Oslo"}',
    )
    assert first.tools[0].name == "get_weather"  # type: ignore[union-attr]

    upstream.queue(Reply.stream("It is sunny."))
    second = client.responses.create(
        model=FAKE,
        tools=[WEATHER_TOOL],
        input=[
            {"role": "user", "content": "Weather in Oslo?"},
            call.model_dump(exclude_none=True),
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny, 21 C"},
        ],
    )
    assert second.output_text == "It is sunny."
    messages = upstream.received[-1]["messages"]
    assert messages[1]["role"] == "assistant"
    assert messages[1]["tool_calls"][0]["id"] == "call_1"
    assert messages[1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert messages[2] == {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"}


def test_input_file_goes_through_chats_file_path(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    upstream.queue(Reply.echo())
    data = base64.b64encode(b"The secret word is heron.").decode()
    response = client.responses.create(
        model=FAKE,
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What is the secret word?"},
                    {
                        "type": "input_file",
                        "filename": "note.txt",
                        "file_data": f"data:text/plain;base64,{data}",
                    },
                ],
            }
        ],
    )
    seen = orjson.loads(response.output_text)
    assert "heron" in seen[0]["content"] and "note.txt" in seen[0]["content"]


# --- refusals ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "hi", "reasoning": {"effort": "low"}}, "reasoning"),
        ({"input": "hi", "background": True}, "background"),
        ({"input": "hi", "tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"input": "hi", "text": {"format": {"type": "yaml"}}}, "text.format.type"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_text", "text": 3}]}]},
            "input[0].content[0].text",
        ),
        (
            {
                "input": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}
                        ],
                    }
                ]
            },
            "input[0].content[0].image_url",  # not a PNG: named as the client sent it
        ),
        ({"input": [{"type": "reasoning", "summary": []}]}, "input[0].type"),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
        ({"input": []}, "input"),
        ({"input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": "hi", "metadata": {"k": 1}}, "metadata"),
        ({}, "input"),
    ],
)
def test_bad_requests_name_the_field(http: httpx.Client, body: dict[str, Any], param: str) -> None:
    answer = http.post("/v1/responses", json={"model": FAKE, **body})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"] == param, error
    assert error["type"] == "invalid_request_error"


def test_tools_on_the_local_model_are_refused_like_chat(http: httpx.Client) -> None:
    answer = http.post(
        "/v1/responses", json={"model": LOCAL, "input": "hi", "tools": [WEATHER_TOOL]}
    )
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == "tools"


# --- streaming --------------------------------------------------------------------------


def test_stream_events_in_order_on_the_local_model(client: openai.OpenAI) -> None:
    events = list(
        client.responses.create(
            model=LOCAL, input="Count to five.", max_output_tokens=16, temperature=0, stream=True
        )
    )
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) >= 2
    assert kinds[4 : 4 + len(deltas)] == ["response.output_text.delta"] * len(deltas)
    assert kinds[4 + len(deltas) :] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        kinds[-1],
    ]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(d.delta for d in deltas)
    final = events[-1].response  # type: ignore[union-attr]
    assert final.output_text == text
    assert final.usage is not None and final.usage.output_tokens > 0


def test_stream_helper_gives_the_final_response(client: openai.OpenAI) -> None:
    with client.responses.stream(
        model=LOCAL, input="Say hello in three words.", max_output_tokens=200, temperature=0
    ) as stream:
        texts = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.output_text == "".join(texts)
    # The SDK's helper needs `response.completed`: the answer must end by itself.
    assert final.status == "completed"


def test_streamed_events_conform_with_tool_calls(
    http: httpx.Client, upstream: FakeUpstream
) -> None:
    upstream.queue(
        Reply.stream(
            "Let me look.", tool_calls=(("call_9", "get_weather", ('{"ci', 'ty": "Rome"}')),)
        )
    )
    with http.stream(
        "POST",
        "/v1/responses",
        json={"model": FAKE, "input": "Weather in Rome?", "tools": [WEATHER_TOOL], "stream": True},
    ) as answer:
        answer.read()
    events = raw_events(answer)
    for event in events:
        conforms(EVENT_SCHEMAS[event["type"]], event)
    kinds = [e["type"] for e in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
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
    final = events[-1]["response"]
    assert [item["type"] for item in final["output"]] == ["message", "function_call"]
    assert final["output"][1]["arguments"] == '{"city": "Rome"}'
    assert events[-3]["arguments"] == '{"city": "Rome"}'


def test_upstream_failure_mid_stream_is_an_error_event(
    http: httpx.Client, upstream: FakeUpstream
) -> None:
    upstream.queue(Reply.stream("a", "b", "c", break_after=1))
    with http.stream(
        "POST", "/v1/responses", json={"model": FAKE, "input": "hi", "stream": True}
    ) as answer:
        answer.read()
    events = raw_events(answer)
    assert events[-1]["type"] == "error"
    conforms("ResponseErrorEvent", events[-1])
    assert [e["sequence_number"] for e in events] == list(range(len(events)))


def test_client_disconnect_mid_stream_cancels_the_upstream(
    stack: Stack, upstream: FakeUpstream
) -> None:
    upstream.queue(Reply.stream(*["x"] * 200, delay_s=0.05))
    before = len(upstream.disconnects)
    with stack.sdk().responses.create(model=FAKE, input="hi", stream=True) as events:
        for event in events:
            if event.type == "response.output_text.delta":
                break
    upstream.wait_for(lambda: len(upstream.disconnects) > before, timeout=10)


# --- storage and chaining ---------------------------------------------------------------


def test_stored_response_is_retrieved_listed_and_deleted(
    client: openai.OpenAI, http: httpx.Client, upstream: FakeUpstream
) -> None:
    upstream.queue(Reply.stream("Stored", " answer"))
    created = client.responses.create(
        model=FAKE,
        instructions="Be brief.",
        input=[
            {"role": "user", "content": "First."},
            {"role": "assistant", "content": "Ok."},
            {"role": "user", "content": [{"type": "input_text", "text": "Second."}]},
        ],
    )
    assert created.store is True
    got = http.get(f"/v1/responses/{created.id}")
    assert got.status_code == 200, got.text
    conforms("Response", got.json())
    assert got.json() == created.model_dump(mode="json", exclude_unset=True) | {
        "output": got.json()["output"]
    }
    assert client.responses.retrieve(created.id).output_text == "Stored answer"

    items = client.responses.input_items.list(created.id, order="asc")
    assert [i.role for i in items.data] == ["user", "assistant", "user"]  # type: ignore[union-attr]
    raw_page = http.get(f"/v1/responses/{created.id}/input_items", params={"limit": 2})
    conforms("ResponseItemList", raw_page.json())
    page = raw_page.json()
    assert page["has_more"] is True and len(page["data"]) == 2
    assert page["data"][0]["content"][0]["text"] == "Second."  # newest first
    rest = http.get(
        f"/v1/responses/{created.id}/input_items",
        params={"limit": 2, "after": page["last_id"]},
    ).json()
    assert rest["has_more"] is False and [i["content"][0]["text"] for i in rest["data"]] == [
        "First."
    ]
    all_items = list(client.responses.input_items.list(created.id, limit=1))
    assert len(all_items) == 3  # the SDK follows the pages

    bare = http.get(f"/responses/{created.id}/input_items", params={"order": "asc"})
    assert bare.status_code == 200 and len(bare.json()["data"]) == 3
    missing = http.get(f"/v1/responses/{'x' * 5000}")
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "response_id"
    assert http.get("/v1/responses/resp_%2F..%2Fetc").status_code == 404
    assert http.get(f"/v1/responses/{created.id}/input_items?limit=0").status_code == 400
    assert http.get(f"/v1/responses/{created.id}/input_items?after=nope").status_code == 400

    deleted = http.delete(f"/v1/responses/{created.id}")
    assert deleted.json() == {"id": created.id, "object": "response", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)
    assert http.delete(f"/v1/responses/{created.id}").status_code == 404


def test_another_teams_response_is_a_404(
    stack: Stack, client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    upstream.queue(Reply.stream("mine"))
    created = client.responses.create(model=FAKE, input="hi")
    other = stack.sdk(create_key(stack.base_url, team="other-team")["key"])
    with pytest.raises(openai.NotFoundError) as caught:
        other.responses.retrieve(created.id)
    assert caught.value.body["param"] == "response_id"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        other.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.input_items.list(created.id)
    with pytest.raises(openai.NotFoundError) as chained:
        other.responses.create(model=FAKE, input="more", previous_response_id=created.id)
    assert chained.value.body["param"] == "previous_response_id"  # type: ignore[index]
    assert client.responses.retrieve(created.id).id == created.id


def test_store_false_keeps_nothing(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.queue(Reply.stream("fleeting"))
    created = client.responses.create(model=FAKE, input="hi", store=False)
    assert created.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)


def test_function_call_output_continues_with_previous_response_id(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    upstream.queue(Reply.stream("", tool_calls=(("call_7", "get_weather", ('{"city": "Lima"}',)),)))
    first = client.responses.create(
        model=FAKE, instructions="Use tools.", input="Weather in Lima?", tools=[WEATHER_TOOL]
    )
    call = next(item for item in first.output if item.type == "function_call")
    upstream.queue(Reply.stream("Lima is foggy."))
    second = client.responses.create(
        model=FAKE,
        previous_response_id=first.id,
        tools=[WEATHER_TOOL],
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "fog"}],
    )
    assert second.previous_response_id == first.id
    assert second.output_text == "Lima is foggy."
    messages = upstream.received[-1]["messages"]
    # Instructions are not carried over (OpenAI's rule); input and output are.
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    assert messages[0]["content"] == "Weather in Lima?"
    assert messages[1]["tool_calls"][0]["id"] == "call_7"
    assert messages[2] == {"role": "tool", "tool_call_id": "call_7", "content": "fog"}
    # A third turn sees the whole chain.
    upstream.queue(Reply.echo())
    third = client.responses.create(model=FAKE, previous_response_id=second.id, input="Thanks.")
    seen = orjson.loads(third.output_text)
    assert [m["role"] for m in seen] == ["user", "assistant", "tool", "assistant", "user"]
    assert seen[3]["content"] == "Lima is foggy."


def test_streamed_response_is_stored_and_chains_on_the_local_model(
    client: openai.OpenAI,
) -> None:
    events = list(
        client.responses.create(
            model=LOCAL, input="My name is Ada.", max_output_tokens=8, temperature=0, stream=True
        )
    )
    final = events[-1].response  # type: ignore[union-attr]
    kept = client.responses.retrieve(final.id)
    assert kept.output_text == final.output_text and kept.usage == final.usage
    follow = client.responses.create(
        model=LOCAL,
        previous_response_id=final.id,
        input="What is my name?",
        max_output_tokens=8,
        temperature=0,
    )
    assert follow.previous_response_id == final.id
    assert follow.usage is not None and follow.usage.input_tokens > kept.usage.input_tokens  # type: ignore[union-attr]


def test_unknown_previous_response_id_is_a_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model=FAKE, input="hi", previous_response_id="resp_nope")
    assert caught.value.body["param"] == "previous_response_id"  # type: ignore[index]


def test_a_response_settles_a_ledger_row_for_its_key(stack: Stack, upstream: FakeUpstream) -> None:
    key = create_key(stack.base_url, team="ledger-team")
    upstream.queue(Reply.stream("counted"))
    created = stack.sdk(key["key"]).responses.create(model=FAKE, input="hi")
    assert created.usage is not None
    rows: list[dict[str, Any]] = []
    for _ in range(50):  # settles are delivered in the background
        rows = usage(stack.base_url, key_id=key["id"], group_by="model")
        if rows and rows[0]["requests"] == 1:
            break
        time.sleep(0.1)
    assert [(r["model"], r["requests"], r["errors"]) for r in rows] == [(FAKE, 1, 0)]
    assert rows[0]["output_tokens"] == created.usage.output_tokens
    # The row says it came in on the Responses route (the ledger's `route`).
    by_route = usage(stack.base_url, key_id=key["id"], group_by="route")
    assert [(r["route"], r["requests"]) for r in by_route] == [("/v1/responses", 1)]
