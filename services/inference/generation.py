"""What a generation is, independent of transport and backend."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Message:
    role: str
    content: str
    name: str = ""


@dataclass(frozen=True, slots=True)
class Sampling:
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stops: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None


@dataclass(frozen=True, slots=True)
class ChatRequest:
    model: str
    messages: tuple[Message, ...]
    sampling: Sampling = field(default_factory=Sampling)
    user: str = ""
    fallback_models: tuple[str, ...] = ()  # tried in order when `model` cannot serve


@dataclass(frozen=True, slots=True)
class Delta:
    choice_index: int
    text: str


@dataclass(frozen=True, slots=True)
class Finish:
    """The end of a generation: why each choice stopped and the exact token counts."""

    finish_reasons: dict[int, str]  # choice index -> "stop" | "length" | "content_filter"
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class Routed:
    """Sent by the router before the first batch: the model that serves (after
    aliases and fallbacks)."""

    model: str


# A backend yields batches of deltas (all it had at the time) and then one Finish.
Event = list[Delta] | Finish


class Backend(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...


class ChatBackend(Backend, Protocol):
    def stream_chat(self, request: ChatRequest) -> AsyncGenerator[Event, None]: ...
