"""Property-based fuzz of the edge: whatever JSON arrives, the answer is never a
5xx, always the OpenAI error shape when it is an error, and never a hung stream.

Bodies are built from the real parameter names with values of any JSON type,
plus unknown fields, so most examples are wrong in one or two places and some
are valid. `max_tokens` stays small when it is a valid number, to keep the
local model quick; every example is bounded by the client timeout.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.stack import ADMIN_KEY, Stack

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
MODEL = "smollm2-135m-instruct"

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_any = st.recursive(
    json_leaf,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
roles = st.sampled_from(["system", "developer", "user", "assistant", "tool", "wizard", "", 7])
part = st.one_of(
    st.fixed_dictionaries(
        {"type": st.just("text"), "text": st.one_of(st.text(max_size=30), json_any)}
    ),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["image_url", "file", "input_audio", "x"])},
        optional={"file": json_any, "image_url": json_any},
    ),
    json_any,
)
message = st.one_of(
    st.fixed_dictionaries(
        {"role": roles},
        optional={
            "content": st.one_of(st.text(max_size=40), st.lists(part, max_size=3), json_any),
            "name": json_any,
        },
    ),
    json_any,
)


def _not_a_long_generation(value: object) -> bool:
    """Any JSON except a number the edge could take as a large `max_tokens`
    (json_any drew 37681 once: minutes of local generation, not a bug)."""
    return isinstance(value, bool) or not isinstance(value, int | float) or value <= 4


small_tokens = st.one_of(st.integers(1, 4), json_any.filter(_not_a_long_generation))


def chat_body() -> st.SearchStrategy[dict[str, Any]]:
    known = st.fixed_dictionaries(
        {"max_tokens": small_tokens},
        optional={
            "model": st.one_of(st.just(MODEL), json_any),
            "messages": st.one_of(st.lists(message, min_size=0, max_size=3), json_any),
            "temperature": st.one_of(st.floats(-1, 3), json_any),
            "top_p": st.one_of(st.floats(-0.5, 1.5), json_any),
            "n": st.one_of(st.integers(-1, 3), json_any),
            "stream": st.one_of(st.booleans(), json_any),
            "stream_options": st.one_of(
                st.fixed_dictionaries({"include_usage": json_any}), json_any
            ),
            "stop": st.one_of(
                st.text(max_size=5), st.lists(st.text(max_size=5), max_size=6), json_any
            ),
            "seed": st.one_of(st.integers(-(2**64), 2**64), json_any),
            "presence_penalty": st.one_of(st.floats(-3, 3), json_any),
            "frequency_penalty": st.one_of(st.floats(-3, 3), json_any),
            "logprobs": json_any,
            "top_logprobs": st.one_of(st.integers(-1, 25), json_any),
            "logit_bias": json_any,
            "response_format": json_any,
            "tools": json_any,
            "user": json_any,
            "models": json_any,
            "metadata": json_any,
        },
    )
    extras = st.dictionaries(st.text(min_size=1, max_size=10), json_any, max_size=2)
    return st.tuples(known, extras).map(lambda pair: {**pair[1], **pair[0]})


def check(answer: httpx.Response) -> None:
    assert answer.status_code < 500, answer.text[:500]
    if answer.status_code >= 400:
        error = answer.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert isinstance(error["message"], str) and error["message"]


FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@given(body=chat_body())
def test_chat_completions_never_5xx_and_never_hang(stack: Stack, body: dict[str, Any]) -> None:
    with httpx.stream(
        "POST", f"{stack.base_url}/v1/chat/completions", headers=AUTH, json=body, timeout=30
    ) as answer:
        if answer.status_code == 200 and answer.headers["content-type"].startswith(
            "text/event-stream"
        ):
            lines = [line for line in answer.iter_lines() if line]
            assert lines[-1] in ("data: [DONE]",) or lines[-1].startswith('data: {"error"')
            return
        answer.read()
    check(answer)


def completion_body() -> st.SearchStrategy[dict[str, Any]]:
    prompt = st.one_of(
        st.text(max_size=30),
        st.lists(st.text(max_size=10), max_size=3),
        st.lists(st.integers(-5, 60000), max_size=5),
        st.lists(st.lists(st.integers(-5, 60000), max_size=4), max_size=2),
        json_any,
    )
    return st.fixed_dictionaries(
        {"max_tokens": small_tokens},
        optional={
            "model": st.one_of(st.just(MODEL), json_any),
            "prompt": prompt,
            "suffix": json_any,
            "echo": json_any,
            "best_of": st.one_of(st.integers(-1, 3), json_any),
            "n": st.one_of(st.integers(-1, 3), json_any),
            "logprobs": st.one_of(st.integers(-1, 6), json_any),
            "stream": st.one_of(st.booleans(), json_any),
            "stop": json_any,
            "seed": json_any,
            "temperature": st.one_of(st.floats(-1, 3), json_any),
            "logit_bias": json_any,
            "response_format": json_any,
        },
    )


@FUZZ
@given(body=completion_body())
def test_completions_never_5xx_and_never_hang(stack: Stack, body: dict[str, Any]) -> None:
    with httpx.stream(
        "POST", f"{stack.base_url}/v1/completions", headers=AUTH, json=body, timeout=30
    ) as answer:
        if answer.status_code == 200 and answer.headers["content-type"].startswith(
            "text/event-stream"
        ):
            lines = [line for line in answer.iter_lines() if line]
            assert lines[-1] == "data: [DONE]" or lines[-1].startswith('data: {"error"')
            return
        answer.read()
    check(answer)


@FUZZ
@given(
    body=st.fixed_dictionaries(
        {},
        optional={
            "model": st.one_of(st.just("multilingual-e5-small"), json_any),
            "input": st.one_of(
                st.text(max_size=30),
                st.lists(st.text(max_size=10), max_size=3),
                st.lists(st.integers(-5, 70000), max_size=5),
                json_any,
            ),
            "encoding_format": st.one_of(st.sampled_from(["float", "base64", "hex"]), json_any),
            "dimensions": json_any,
            "user": json_any,
        },
    )
)
def test_embeddings_never_5xx(stack: Stack, body: dict[str, Any]) -> None:
    check(httpx.post(f"{stack.base_url}/v1/embeddings", headers=AUTH, json=body, timeout=30))


@FUZZ
@given(
    body=st.fixed_dictionaries(
        {},
        optional={
            "input_file_id": st.one_of(st.sampled_from(["file-x", ""]), json_any),
            "endpoint": st.one_of(
                st.sampled_from(["/v1/chat/completions", "/v1/embeddings", "/v2/x"]), json_any
            ),
            "completion_window": st.one_of(st.sampled_from(["24h", "1h"]), json_any),
            "metadata": json_any,
            "extra": json_any,
        },
    )
)
def test_batch_create_never_5xx(stack: Stack, body: dict[str, Any]) -> None:
    check(httpx.post(f"{stack.base_url}/v1/batches", headers=AUTH, json=body, timeout=30))


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b"[]", b"null", b'"x"', b"1e999", b'{"model": NaN}', b"\xff\xfe", b'{"a":' * 5000],
)
def test_raw_bodies_never_5xx(stack: Stack, raw: bytes) -> None:
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/batches"):
        check(
            httpx.post(
                f"{stack.base_url}{path}",
                content=raw,
                headers={**AUTH, "Content-Type": "application/json"},
                timeout=30,
            )
        )


def test_openapi_document_describes_the_served_routes(stack: Stack) -> None:
    answer = httpx.get(f"{stack.base_url}/openapi.json")
    assert answer.status_code == 200
    document = answer.json()
    assert document["openapi"].startswith("3.1")
    for path in (
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/models",
        "/v1/files",
        "/v1/batches",
        "/v1/batches/{batch_id}/cancel",
        "/v1/admin/keys",
        "/v1/admin/usage",
    ):
        assert path in document["paths"], path
    chat = document["paths"]["/v1/chat/completions"]["post"]
    schema = chat["requestBody"]["content"]["application/json"]["schema"]
    assert set(schema["required"]) == {"model", "messages"}
    # Every documented path answers (here without a key: 401 in the error shape, not 404).
    for path, operations in document["paths"].items():
        concrete = path.replace("{model_id}", MODEL).replace("{file_id}", "file-x")
        concrete = concrete.replace("{id}", "key_x").replace("{team}", "t")
        concrete = concrete.replace("{batch_id}", "batch_x")
        for method in operations:
            reply = httpx.request(method.upper(), f"{stack.base_url}{concrete}", timeout=30)
            assert reply.status_code != 404 or "unknown_route" not in reply.text, (method, path)
            assert reply.status_code < 500, (method, path)
