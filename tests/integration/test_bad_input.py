"""Malformed requests get the OpenAI error shape, the right status and `param`."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.stack import ADMIN_KEY, Stack

MODEL = "smollm2-135m-instruct"
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
OK_MESSAGES = [{"role": "user", "content": "hi"}]


def post(stack: Stack, body: bytes | dict[str, Any], **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else None
    return httpx.post(
        f"{stack.base_url}/v1/chat/completions",
        headers={**AUTH, "Content-Type": "application/json", **headers},
        content=content,
        json=None if content is not None else body,
        timeout=30,
    )


def assert_error(answer: httpx.Response, status: int, param: str | None) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    assert error["param"] == param
    return error  # type: ignore[no-any-return]


def test_malformed_json_is_400(stack: Stack) -> None:
    error = assert_error(post(stack, b'{"model": '), 400, None)
    assert error["code"] == "invalid_json"


def test_body_that_is_not_an_object_is_400(stack: Stack) -> None:
    assert_error(post(stack, b"[1, 2]"), 400, None)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": OK_MESSAGES}, "model"),
        ({"model": 7, "messages": OK_MESSAGES}, "model"),
        ({"model": MODEL}, "messages"),
        ({"model": MODEL, "messages": "hi"}, "messages"),
        ({"model": MODEL, "messages": []}, "messages"),
        ({"model": MODEL, "messages": ["hi"]}, "messages[0]"),
        ({"model": MODEL, "messages": [{"role": 3, "content": "hi"}]}, "messages[0].role"),
        ({"model": MODEL, "messages": [{"content": "hi"}]}, "messages[0].role"),
        ({"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"model": MODEL, "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"model": MODEL, "messages": [{"role": "user"}]}, "messages[0].content"),
        (
            {
                "model": MODEL,
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}],
                    }
                ],
            },
            # The bundled model is text-only: the part it cannot take.
            "messages[0].content[0]",
        ),
        ({"model": MODEL, "messages": OK_MESSAGES, "temperature": 3}, "temperature"),
        ({"model": MODEL, "messages": OK_MESSAGES, "temperature": "hot"}, "temperature"),
        ({"model": MODEL, "messages": OK_MESSAGES, "top_p": -0.1}, "top_p"),
        ({"model": MODEL, "messages": OK_MESSAGES, "max_tokens": 0}, "max_tokens"),
        ({"model": MODEL, "messages": OK_MESSAGES, "max_tokens": 1.5}, "max_tokens"),
        ({"model": MODEL, "messages": OK_MESSAGES, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"model": MODEL, "messages": OK_MESSAGES, "stop": 3}, "stop"),
        ({"model": MODEL, "messages": OK_MESSAGES, "stream": "yes"}, "stream"),
        (
            {"model": MODEL, "messages": OK_MESSAGES, "stream_options": {"include_usage": True}},
            "stream_options",
        ),
        ({"model": MODEL, "messages": OK_MESSAGES, "presence_penalty": 2.5}, "presence_penalty"),
        ({"model": MODEL, "messages": OK_MESSAGES, "seed": "x"}, "seed"),
        ({"model": MODEL, "messages": OK_MESSAGES, "n": 129}, "n"),
        ({"model": MODEL, "messages": OK_MESSAGES, "logprobs": "yes"}, "logprobs"),
        ({"model": MODEL, "messages": OK_MESSAGES, "logit_bias": [1]}, "logit_bias"),
        (
            {
                "model": MODEL,
                "messages": OK_MESSAGES,
                "tools": [{"type": "function", "function": {"name": "bad name"}}],
            },
            "tools[0].function.name",
        ),
    ],
)
def test_bad_field_is_400_naming_it(stack: Stack, body: dict[str, Any], param: str) -> None:
    assert_error(post(stack, body), 400, param)


def test_wrong_content_type_is_415(stack: Stack) -> None:
    answer = post(stack, b"model=x", **{"Content-Type": "application/x-www-form-urlencoded"})
    assert_error(answer, 415, None)


def test_body_over_the_limit_is_413(stack: Stack) -> None:
    huge = {"model": MODEL, "messages": [{"role": "user", "content": "x" * (2 * 1024 * 1024)}]}
    assert_error(post(stack, huge), 413, None)


def test_prompt_longer_than_the_context_is_400(stack: Stack) -> None:
    words = " ".join(["lorem"] * 9000)
    error = assert_error(
        post(stack, {"model": MODEL, "messages": [{"role": "user", "content": words}]}),
        400,
        "messages",
    )
    assert error["code"] == "context_length_exceeded"


def test_unknown_route_and_wrong_method(stack: Stack) -> None:
    assert_error(httpx.get(f"{stack.base_url}/v1/nothing-here", headers=AUTH), 404, None)
    assert_error(httpx.get(f"{stack.base_url}/v1/chat/completions", headers=AUTH), 405, None)


def test_service_still_answers_after_bad_input(stack: Stack) -> None:
    answer = post(stack, {"model": MODEL, "messages": OK_MESSAGES, "max_tokens": 2})
    assert answer.status_code == 200
    assert answer.json()["usage"]["completion_tokens"] == 2
