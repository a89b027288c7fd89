"""No request may hold the bundled local model for long (issue #20 item 2):
prompts too big to fit are refused by counting, before any tokenization."""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest

from tests.stack import ADMIN_KEY, Stack

MODEL = "smollm2-135m-instruct"
HEADERS = {"Authorization": f"Bearer {ADMIN_KEY}"}
# The defaults: AQUEDUCT_LOCAL_MAX_MESSAGES, and 8 characters per token of the
# default 8192-token context (AQUEDUCT_LOCAL_MAX_PROMPT_CHARS).
MAX_MESSAGES = 2048
MAX_CHARS = 8 * 8192


def small_request(stack: Stack) -> float:
    """Seconds a short local chat takes end to end."""
    started = time.monotonic()
    reply = stack.sdk(timeout=120).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=8, temperature=0
    )
    assert reply.choices[0].message.content is not None
    return time.monotonic() - started


def test_a_hostile_message_count_is_refused_at_once_and_blocks_no_one(stack: Stack) -> None:
    """32,000 one-character messages (a 1 MB body) took the tokenizer ~27 s and
    held the next small request that long."""
    normal = small_request(stack)
    hostile: list[tuple[httpx.Response, float]] = []

    def attack() -> None:
        started = time.monotonic()
        answer = httpx.post(
            f"{stack.base_url}/v1/chat/completions",
            headers=HEADERS,
            json={"model": MODEL, "messages": [{"role": "user", "content": "a"}] * 32_000},
            timeout=120,
        )
        hostile.append((answer, time.monotonic() - started))

    attacker = threading.Thread(target=attack)
    attacker.start()
    time.sleep(0.2)  # the hostile request goes first
    during = small_request(stack)
    attacker.join(130)
    answer, took = hostile[0]
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert (error["code"], error["param"], error["type"]) == (
        "context_length_exceeded",
        "messages",
        "invalid_request_error",
    )
    assert f"at most {MAX_MESSAGES} messages" in error["message"] and "32000" in error["message"]
    # Generous bounds for a slow, shared machine; the hostile request took ~27 s before.
    assert took < 10, took
    assert during < max(10.0, 4 * normal), (during, normal)


def test_prompt_text_over_the_character_limit_is_refused_naming_it(stack: Stack) -> None:
    client = stack.sdk()
    with pytest.raises(openai.BadRequestError) as chat:
        client.chat.completions.create(
            model=MODEL,
            messages=[
                {"role": "system", "content": "x" * (MAX_CHARS // 2)},
                {"role": "user", "content": "y" * (MAX_CHARS // 2 + 1)},
            ],
        )
    error = chat.value.body
    assert (error["code"], error["param"]) == ("context_length_exceeded", "messages")  # type: ignore[index]
    assert f"at most {MAX_CHARS} characters" in error["message"]  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as completion:
        client.completions.create(model=MODEL, prompt=["z" * MAX_CHARS, "z"], max_tokens=1)
    error = completion.value.body
    assert (error["code"], error["param"]) == ("context_length_exceeded", "prompt")  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as tokens:  # token ids beyond the context
        client.completions.create(model=MODEL, prompt=[[1] * 8192], max_tokens=1)
    error = tokens.value.body
    assert (error["code"], error["param"]) == ("context_length_exceeded", "prompt")  # type: ignore[index]
    assert "8192 tokens" in error["message"]  # type: ignore[index]
