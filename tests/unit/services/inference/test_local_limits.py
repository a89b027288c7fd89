"""The local model's size check: by counting, before anything is tokenized."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from core.config import ConfigError
from core.errors import Kind, ServiceError
from services.inference.config import Settings
from services.inference.generation import ChatRequest, CompletionRequest, Message
from services.inference.local_model import LocalChatModel, LocalModelOptions


def refusal(model: LocalChatModel, request: ChatRequest | CompletionRequest) -> ServiceError:
    """What the model answers before queueing (it is never loaded here)."""

    async def first() -> None:
        if isinstance(request, ChatRequest):
            await anext(model.stream_chat(request))
        else:
            await anext(model.stream_completion(request))

    with pytest.raises(ServiceError) as caught:
        asyncio.run(first())
    assert (caught.value.kind, caught.value.reason) == (
        Kind.INVALID_ARGUMENT,
        "CONTEXT_LENGTH_EXCEEDED",
    )
    return caught.value


def model(**options: object) -> LocalChatModel:
    return LocalChatModel("tiny", LocalModelOptions(path=Path("unused.gguf"), **options))  # type: ignore[arg-type]


def test_too_many_messages_or_prompts_are_refused_naming_the_limit() -> None:
    limited = model(max_messages=3)
    error = refusal(limited, ChatRequest("tiny", (Message("user", "a"),) * 4))
    assert error.param == "messages"
    assert "at most 3 messages" in error.message and "got 4" in error.message
    error = refusal(limited, CompletionRequest("tiny", ("a",) * 4))
    assert error.param == "prompt" and "at most 3 prompts" in error.message


def test_the_character_limit_follows_the_context_unless_set() -> None:
    assert LocalModelOptions(path=Path("x"), n_ctx=1024).prompt_chars_limit == 8 * 1024
    assert LocalModelOptions(path=Path("x"), max_prompt_chars=10).prompt_chars_limit == 10
    small = model(n_ctx=256)
    error = refusal(
        small, ChatRequest("tiny", (Message("system", "x" * 2000), Message("user", "y" * 49)))
    )
    assert error.param == "messages"
    assert "at most 2048 characters" in error.message and "got 2049" in error.message
    error = refusal(small, CompletionRequest("tiny", ("x" * 2049,)))
    assert error.param == "prompt"
    error = refusal(small, CompletionRequest("tiny", ((1,) * 256,)))  # token ids: the context
    assert error.param == "prompt" and "256 tokens" in error.message


def test_settings_read_the_limits_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AQUEDUCT_LOCAL_MAX_PROMPT_CHARS", raising=False)
    assert Settings.from_env().local_max_prompt_chars is None  # derived from the context
    monkeypatch.setenv("AQUEDUCT_LOCAL_MAX_MESSAGES", "64")
    monkeypatch.setenv("AQUEDUCT_LOCAL_MAX_PROMPT_CHARS", "5000")
    settings = Settings.from_env()
    assert (settings.local_max_messages, settings.local_max_prompt_chars) == (64, 5000)
    monkeypatch.setenv("AQUEDUCT_LOCAL_MAX_MESSAGES", "0")
    with pytest.raises(ConfigError, match="AQUEDUCT_LOCAL_MAX_MESSAGES"):
        Settings.from_env()
