"""The edge driven by the official openai SDK, end to end on the bundled model."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.stack import ADMIN_KEY, Stack

MODEL = "smollm2-135m-instruct"
EMBEDDING_MODEL = "multilingual-e5-small"
HELLO = [{"role": "user", "content": "Say hello."}]


def test_models_list_names_the_bundled_models(client: openai.OpenAI) -> None:
    models = client.models.list()
    ids = [m.id for m in models.data]
    assert ids == [MODEL, EMBEDDING_MODEL]
    assert models.data[0].object == "model"
    assert models.data[0].owned_by


def test_chat_without_stream_returns_text_finish_reason_and_usage(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=12, temperature=0
    )
    choice = completion.choices[0]
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == MODEL
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    usage = completion.usage
    assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.completion_tokens <= 12


def test_max_tokens_cuts_with_length(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Write a long story about a dragon."}],
        max_tokens=3,
        temperature=0,
    )
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 3


def test_stream_with_usage_matches_the_non_streamed_answer(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=16, temperature=0
    )
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=HELLO,
            max_tokens=16,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.model_dump() == whole.usage.model_dump()  # type: ignore[union-attr]
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_without_include_usage_sends_no_usage(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4, stream=True)
    )
    assert chunks and all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"


def test_stream_ends_with_done_over_raw_sse(stack: Stack) -> None:
    with httpx.stream(
        "POST",
        f"{stack.base_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        json={"model": MODEL, "messages": HELLO, "max_tokens": 4, "stream": True},
    ) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        events = [line for line in answer.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"


def test_stop_sequence_is_not_included(client: openai.OpenAI) -> None:
    free = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=20, temperature=0)
    text = free.choices[0].message.content or ""
    assert len(text) > 4
    stop = text[2:5]
    cut = client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=20, temperature=0, stop=[stop]
    )
    assert cut.choices[0].message.content == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_unknown_key_raises_authentication_error(stack: Stack) -> None:
    bad = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key="sk-aq-nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        bad.chat.completions.create(model=MODEL, messages=HELLO)
    assert caught.value.status_code == 401
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


@pytest.mark.parametrize(
    "presented",
    [
        ADMIN_KEY.upper(),
        f" {ADMIN_KEY}",
        ADMIN_KEY[:-1],
        ADMIN_KEY.replace("sk-aq-", "sk-"),
    ],
)
def test_key_variants_are_unknown(stack: Stack, presented: str) -> None:
    answer = httpx.get(
        f"{stack.base_url}/v1/models", headers={"Authorization": f"Bearer {presented}"}
    )
    assert answer.status_code == 401
    assert answer.json()["error"]["type"] == "authentication_error"


def test_missing_key_is_401_on_bare_and_v1_routes(stack: Stack) -> None:
    for path in ("/v1/models", "/models"):
        answer = httpx.get(f"{stack.base_url}{path}")
        assert answer.status_code == 401
        assert answer.json()["error"]["code"] == "missing_api_key"
    answer = httpx.post(
        f"{stack.base_url}/chat/completions", json={"model": MODEL, "messages": HELLO}
    )
    assert answer.status_code == 401


def test_bare_routes_serve_like_v1(stack: Stack) -> None:
    bare = openai.OpenAI(base_url=stack.base_url, api_key=ADMIN_KEY, max_retries=0)
    assert [m.id for m in bare.models.list().data] == [MODEL, EMBEDDING_MODEL]
    completion = bare.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=2, temperature=0
    )
    assert completion.usage is not None and completion.usage.completion_tokens == 2


def test_unknown_model_is_not_found_naming_the_param(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=HELLO)
    assert caught.value.body["param"] == "model"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=HELLO, stream=True)


def test_client_disconnect_stops_local_generation(stack: Stack) -> None:
    assert stack.inference is not None
    backend = stack.inference.registry.resolve(MODEL).backend
    long_story = [{"role": "user", "content": "Tell a very long story."}]
    with httpx.stream(
        "POST",
        f"{stack.base_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        json={
            "model": MODEL,
            "messages": long_story,
            "max_tokens": 4000,
            "stream": True,
            "temperature": 1,
        },
    ) as answer:
        for line in answer.iter_lines():
            if '"content":"' in line and '"role"' not in line:
                break  # text is flowing: walk away mid-stream
    # 4000 tokens take about a minute here; a stopped generation frees the model at once.
    deadline = time.monotonic() + 10.0  # generous: a slow, shared machine
    while backend.in_flight and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.01)
    assert backend.in_flight == 0  # type: ignore[attr-defined]
