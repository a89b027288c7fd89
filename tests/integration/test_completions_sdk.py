"""/v1/completions and the new chat parameters on the bundled model, driven by the
official openai SDK over real sockets: every parameter, and the errors the SDK raises."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from tests.admin_api import create_key
from tests.stack import ADMIN_KEY, Stack

MODEL = "smollm2-135m-instruct"
STORY = "Once upon a time"
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "string", "pattern": "^[0-9]{1,3}$"},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}
PERSON_FORMAT: Any = {
    "type": "json_schema",
    "json_schema": {"name": "person", "schema": PERSON, "strict": True},
}


def test_completion_shape_and_default_max_tokens(client: openai.OpenAI) -> None:
    completion = client.completions.create(model=MODEL, prompt=STORY, temperature=0)
    assert completion.object == "text_completion"
    assert completion.id.startswith("cmpl-")
    assert completion.model == MODEL
    assert completion.model_extra is not None and completion.model_extra["provider"]
    [choice] = completion.choices
    assert choice.index == 0 and choice.text and choice.logprobs is None
    assert choice.finish_reason in ("stop", "length")
    usage = completion.usage
    assert usage is not None and usage.prompt_tokens > 0
    assert 0 < usage.completion_tokens <= 16  # OpenAI's default max_tokens for /completions
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_every_prompt_form(client: openai.OpenAI) -> None:
    text = client.completions.create(model=MODEL, prompt=STORY, max_tokens=4, temperature=0)
    strings = client.completions.create(
        model=MODEL, prompt=[STORY, "def add(a, b):"], max_tokens=4, temperature=0
    )
    assert [c.index for c in strings.choices] == [0, 1]
    assert strings.choices[0].text == text.choices[0].text
    tokens = client.completions.create(model=MODEL, prompt=[9, 10, 11], max_tokens=4, temperature=0)
    assert len(tokens.choices) == 1 and tokens.usage is not None
    assert tokens.usage.prompt_tokens == 3
    lists = client.completions.create(
        model=MODEL, prompt=[[9, 10, 11], [12, 13]], max_tokens=4, temperature=0
    )
    assert [c.index for c in lists.choices] == [0, 1]
    assert lists.choices[0].text == tokens.choices[0].text
    assert lists.usage is not None and lists.usage.prompt_tokens == 5


def test_choices_are_prompt_major_with_n(client: openai.OpenAI) -> None:
    prompts = ["The capital of France is", "def fibonacci(n):"]
    completion = client.completions.create(
        model=MODEL, prompt=prompts, n=2, max_tokens=6, temperature=0
    )
    texts = [c.text for c in completion.choices]
    assert [c.index for c in completion.choices] == [0, 1, 2, 3]
    # Temperature 0: a prompt's n choices are equal; prompt-major puts them side by side.
    assert texts[0] == texts[1] and texts[2] == texts[3]
    assert texts[0] != texts[2]
    alone = client.completions.create(model=MODEL, prompt=prompts[1], max_tokens=6, temperature=0)
    assert alone.choices[0].text == texts[2]


def test_n_samples_differ_and_seed_reproduces(client: openai.OpenAI) -> None:
    def sample() -> list[str]:
        completion = client.completions.create(
            model=MODEL, prompt=STORY, n=3, max_tokens=12, temperature=1.0, seed=1234
        )
        return [c.text for c in completion.choices]

    first = sample()
    assert sample() == first
    assert len(set(first)) > 1


def test_temperature_zero_reproduces(client: openai.OpenAI) -> None:
    answers = {
        client.completions.create(
            model=MODEL, prompt=STORY, max_tokens=20, temperature=0, seed=seed
        )
        .choices[0]
        .text
        for seed in (1, 2, 3)
    }
    assert len(answers) == 1


def test_stop_ends_before_the_sequence(client: openai.OpenAI) -> None:
    free = client.completions.create(model=MODEL, prompt=STORY, max_tokens=20, temperature=0)
    text = free.choices[0].text
    word = text.split()[2]
    stopped = client.completions.create(
        model=MODEL, prompt=STORY, max_tokens=20, temperature=0, stop=[word, "zzzz"]
    )
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].text == text[: text.index(word)]


def test_echo_puts_the_prompt_first(client: openai.OpenAI) -> None:
    plain = client.completions.create(model=MODEL, prompt=STORY, max_tokens=5, temperature=0)
    echoed = client.completions.create(
        model=MODEL, prompt=STORY, max_tokens=5, temperature=0, echo=True
    )
    assert echoed.choices[0].text == STORY + plain.choices[0].text


def test_suffix_is_refused_without_fill_in_the_middle(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL, prompt="def f(", suffix="return x", max_tokens=4)
    assert caught.value.status_code == 400
    assert caught.value.param == "suffix"
    assert "fill-in-the-middle" in caught.value.message


def test_logprobs_list_each_token_and_its_alternatives(client: openai.OpenAI) -> None:
    completion = client.completions.create(
        model=MODEL, prompt=STORY, max_tokens=8, temperature=0, logprobs=3
    )
    choice = completion.choices[0]
    lp = choice.logprobs
    assert lp is not None and lp.tokens and lp.token_logprobs and lp.top_logprobs
    assert completion.usage is not None
    assert len(lp.tokens) == completion.usage.completion_tokens == 8
    assert "".join(lp.tokens) == choice.text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert logprob <= 0
        assert 1 <= len(top) <= 3
        # Greedy: the sampled token is the most likely one.
        assert token in top and top[token] == pytest.approx(max(top.values()), abs=1e-4)


def test_best_of_returns_the_most_likely_candidate(client: openai.OpenAI) -> None:
    options: dict[str, Any] = {
        "model": MODEL,
        "prompt": STORY,
        "max_tokens": 6,
        "temperature": 1.0,
        "seed": 99,
    }
    # best_of candidates use the seeds n choices use, so n=3 shows all three.
    every = client.completions.create(n=3, logprobs=0, **options)
    means = []
    for c in every.choices:
        assert c.logprobs is not None and c.logprobs.token_logprobs
        means.append(sum(c.logprobs.token_logprobs) / len(c.logprobs.token_logprobs))
    best = client.completions.create(best_of=3, **options)
    assert len(best.choices) == 1 and best.choices[0].index == 0
    assert best.choices[0].text == every.choices[means.index(max(means))].text
    assert best.usage is not None and every.usage is not None
    assert best.usage.completion_tokens == every.usage.completion_tokens  # all are billed


def test_stream_matches_and_indexes_choices(client: openai.OpenAI) -> None:
    prompts = ["The capital of France is", "def fibonacci(n):"]
    whole = client.completions.create(model=MODEL, prompt=prompts, n=2, max_tokens=6, temperature=0)
    chunks = list(
        client.completions.create(
            model=MODEL,
            prompt=prompts,
            n=2,
            max_tokens=6,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(c.object == "text_completion" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    texts: dict[int, str] = {}
    finishes: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert texts == {c.index: c.text for c in whole.choices}
    assert finishes == {c.index: c.finish_reason for c in whole.choices}
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.model_dump() == whole.usage.model_dump()  # type: ignore[union-attr]


def test_logit_bias_forces_a_token(client: openai.OpenAI) -> None:
    completion = client.completions.create(
        model=MODEL, prompt=STORY, max_tokens=5, temperature=0, logit_bias={"30": 100}, logprobs=0
    )
    lp = completion.choices[0].logprobs
    assert lp is not None and lp.tokens is not None
    assert len(lp.tokens) == 5 and len(set(lp.tokens)) == 1
    other = client.completions.create(
        model=MODEL, prompt=STORY, max_tokens=5, temperature=0, logit_bias={"31": 100}, logprobs=0
    )
    assert other.choices[0].logprobs is not None
    assert other.choices[0].logprobs.tokens != lp.tokens


def test_json_schema_completion_validates(client: openai.OpenAI) -> None:
    completion = client.completions.create(
        model=MODEL,
        prompt="A person as JSON:",
        max_tokens=120,
        temperature=1.0,
        seed=5,
        extra_body={"response_format": PERSON_FORMAT},
    )
    assert completion.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(completion.choices[0].text), PERSON)


@pytest.mark.parametrize("stream", [False, True])
def test_chat_json_schema_validates(client: openai.OpenAI, stream: bool) -> None:
    messages: Any = [{"role": "user", "content": "Describe a person."}]
    for seed in (1, 2):
        if stream:
            chunks = list(
                client.chat.completions.create(
                    model=MODEL,
                    messages=messages,
                    max_tokens=120,
                    temperature=1.0,
                    seed=seed,
                    response_format=PERSON_FORMAT,
                    stream=True,
                )
            )
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
        else:
            answer = client.chat.completions.create(
                model=MODEL,
                messages=messages,
                max_tokens=120,
                temperature=1.0,
                seed=seed,
                response_format=PERSON_FORMAT,
            )
            text = answer.choices[0].message.content or ""
            finish = answer.choices[0].finish_reason
        assert finish == "stop"
        jsonschema.validate(json.loads(text), PERSON)


def test_chat_json_object_and_grammar(client: openai.OpenAI) -> None:
    messages: Any = [{"role": "user", "content": "Is the sky blue?"}]
    answer = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=150,
        temperature=0.7,
        seed=3,
        response_format={"type": "json_object"},
    )
    assert answer.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(answer.choices[0].message.content or ""), dict)
    for seed in (1, 2, 3):
        yes_no = client.chat.completions.create(
            model=MODEL,
            messages=messages,
            max_tokens=10,
            temperature=1.0,
            seed=seed,
            response_format={"type": "grammar", "grammar": 'root ::= "yes" | "no"'},  # type: ignore[arg-type,misc]
        )
        assert yes_no.choices[0].message.content in ("yes", "no")


def test_chat_n_logprobs_and_top_logprobs(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=6,
        temperature=1.0,
        seed=7,
        n=2,
        logprobs=True,
        top_logprobs=2,
    )
    assert [c.index for c in answer.choices] == [0, 1]
    total = 0
    for choice in answer.choices:
        assert choice.logprobs is not None and choice.logprobs.content
        content = choice.logprobs.content
        total += len(content)
        assert "".join(e.token for e in content) == choice.message.content
        for entry in content:
            assert entry.logprob <= 0 and len(entry.top_logprobs) == 2
            assert bytes(entry.bytes or []) == entry.token.encode()
    assert answer.usage is not None and answer.usage.completion_tokens == total


def test_chat_stream_with_n_and_logprobs(client: openai.OpenAI) -> None:
    options: Any = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 6,
        "temperature": 1.0,
        "seed": 11,
        "n": 2,
        "logprobs": True,
    }
    whole = client.chat.completions.create(**options)
    texts: dict[int, str] = {}
    tokens: dict[int, int] = {}
    roles = set()
    for chunk in client.chat.completions.create(stream=True, **options):
        for choice in chunk.choices:
            if choice.delta.role:
                roles.add(choice.index)
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
            if choice.logprobs and choice.logprobs.content:
                tokens[choice.index] = tokens.get(choice.index, 0) + len(choice.logprobs.content)
    assert roles == {0, 1}
    assert texts == {c.index: c.message.content for c in whole.choices}
    assert sum(tokens.values()) == whole.usage.completion_tokens  # type: ignore[union-attr]


def test_chat_seed_reproduces_at_temperature_one(client: openai.OpenAI) -> None:
    def ask(seed: int) -> str:
        return (
            client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "Tell me a story."}],
                max_tokens=16,
                temperature=1.0,
                seed=seed,
            )
            .choices[0]
            .message.content
            or ""
        )

    assert ask(42) == ask(42)


def test_chat_penalties_and_logit_bias_are_honoured(client: openai.OpenAI) -> None:
    options: Any = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 8,
        "temperature": 0,
        "logprobs": True,
    }
    biased = client.chat.completions.create(logit_bias={"30": 100}, **options)
    content = biased.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len({e.token for e in content}) == 1
    plain = client.chat.completions.create(**options)
    penalised = client.chat.completions.create(
        frequency_penalty=2.0, presence_penalty=2.0, **options
    )
    assert plain.choices[0].message.content  # the same request twice would be equal
    assert plain.choices[0].message.content != biased.choices[0].message.content
    assert penalised.usage is not None and penalised.usage.completion_tokens > 0


# --- errors ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"n": 0}, "n"),
        ({"n": 129}, "n"),
        ({"logprobs": 6}, "logprobs"),
        ({"best_of": 1, "n": 2}, "best_of"),
        ({"best_of": 2, "stream": True}, "best_of"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"presence_penalty": -3}, "presence_penalty"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"logit_bias": {"x": 1}}, "logit_bias"),
        ({"logit_bias": {"5": 101}}, "logit_bias"),
        ({"logit_bias": {"999999": 1}}, "logit_bias"),
        ({"prompt": []}, "prompt"),
        ({"prompt": [[1, 2], "text", 3]}, "prompt"),
        ({"extra_body": {"response_format": {"type": "xml"}}}, "response_format.type"),
        (
            {"extra_body": {"response_format": {"type": "grammar", "grammar": "root ::= ("}}},
            "response_format",
        ),
        (  # a grammar no token can follow: refused, and the model process lives on
            {"extra_body": {"response_format": {"type": "grammar", "grammar": "root ::= [\\x00]"}}},
            "response_format",
        ),
        (
            {
                "extra_body": {
                    "response_format": {
                        "type": "json_schema",
                        "json_schema": {"name": "x", "schema": {"type": "nope"}},
                    }
                }
            },
            "response_format.json_schema.schema",
        ),
        (  # the local model refuses what it cannot enforce while decoding
            {
                "extra_body": {
                    "response_format": {
                        "type": "json_schema",
                        "json_schema": {
                            "name": "x",
                            "schema": {"type": "object", "properties": {"a": {"minimum": 1}}},
                        },
                    }
                }
            },
            "response_format.json_schema.schema",
        ),
    ],
)
def test_bad_completion_parameter_is_400_naming_it(
    client: openai.OpenAI, options: dict[str, Any], param: str
) -> None:
    body: dict[str, Any] = {"model": MODEL, "prompt": STORY, "max_tokens": 4, **options}
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(**body)
    assert caught.value.status_code == 400
    assert caught.value.param == param


def test_echo_with_logprobs_is_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL, prompt=STORY, echo=True, logprobs=1, max_tokens=2)
    assert caught.value.param == "echo"


def test_chat_tools_are_refused_on_the_local_model(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
        )
    assert caught.value.param == "tools"
    assert "no tool calling" in caught.value.message


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"n": 0}, "n"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ],
)
def test_bad_chat_parameter_is_400_naming_it(
    client: openai.OpenAI, options: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2, **options
        )
    assert caught.value.param == param


def test_completion_error_classes(client: openai.OpenAI, stack: Stack) -> None:
    bad_key = openai.OpenAI(base_url=client.base_url, api_key="sk-aq-nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad_key.completions.create(model=MODEL, prompt=STORY, max_tokens=2)
    with pytest.raises(openai.NotFoundError) as missing:
        client.completions.create(model="no-such-model", prompt=STORY, max_tokens=2)
    assert missing.value.param == "model"
    limited = create_key(stack.base_url, models=["multilingual-e5-small"])
    other = openai.OpenAI(base_url=client.base_url, api_key=limited["key"], max_retries=0)
    with pytest.raises(openai.PermissionDeniedError):
        other.completions.create(model=MODEL, prompt=STORY, max_tokens=2)
    with pytest.raises(openai.BadRequestError) as embedder:
        client.completions.create(model="multilingual-e5-small", prompt=STORY, max_tokens=2)
    assert embedder.value.param == "model"


def test_completion_content_type_and_size(stack: Stack) -> None:
    url = f"{stack.base_url}/v1/completions"
    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
    wrong = httpx.post(url, headers={**auth, "content-type": "text/plain"}, content=b"{}")
    assert wrong.status_code == 415
    huge = httpx.post(  # the test stack's edge takes at most 1 MB
        url,
        headers={**auth, "content-type": "application/json"},
        content=b" " * (2 * 2**20),
        timeout=30,
    )
    assert huge.status_code == 413
    bare = httpx.post(
        f"{stack.base_url}/completions",
        headers=auth,
        json={"model": MODEL, "prompt": STORY, "max_tokens": 2},
    )
    assert bare.status_code == 200 and bare.json()["object"] == "text_completion"


@pytest.mark.parametrize("stream", [True, False])
def test_client_disconnect_stops_every_choice(stack: Stack, stream: bool) -> None:
    assert stack.inference is not None
    backend = stack.inference.registry.resolve(MODEL).backend
    body = {
        "model": MODEL,
        "prompt": ["Once upon a time", "Long ago"],
        "n": 3,
        "max_tokens": 2000,  # 12000 tokens: minutes of work unless stopped
        "temperature": 1,
        "stream": stream,
    }
    url = f"{stack.base_url}/v1/completions"
    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
    if stream:
        with httpx.stream("POST", url, headers=auth, json=body) as answer:
            for line in answer.iter_lines():
                if '"text":"' in line:
                    break  # text is flowing: walk away mid-stream
    else:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url, headers=auth, json=body, timeout=1.0)
    deadline = time.monotonic() + 2.0
    while backend.in_flight and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.01)
    assert backend.in_flight == 0  # type: ignore[attr-defined]
