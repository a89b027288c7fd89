"""What a generation is, independent of transport and backend."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text as the model wrote it


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """Part of a tool call while it streams; `arguments` fragments concatenate."""

    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class ImageInput:
    """An image part: a URL the upstream fetches (passed on as given), or the
    image's bytes with their media type."""

    url: str = ""
    data: bytes = b""
    media_type: str = ""
    detail: str = ""  # OpenAI `detail`; "" unset
    filename: str = ""  # the file it came from, for messages only


@dataclass(frozen=True, slots=True)
class AudioInput:
    data: bytes
    format: str  # "wav" | "mp3"


Part = str | ImageInput | AudioInput
# The models-file capability each kind of part needs.
PART_CAPABILITY: dict[type, str] = {ImageInput: "vision", AudioInput: "audio"}


@dataclass(frozen=True, slots=True)
class Message:
    role: str
    content: str  # the text; with `parts`, their text parts joined
    name: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""
    # The content as parts (one per OpenAI content part), when it has media; () otherwise.
    parts: tuple[Part, ...] = ()


@dataclass(frozen=True, slots=True)
class MediaNeed:
    """The first part of a request that needs a capability, to name in errors."""

    capability: str
    param: str  # messages[i].content[j]
    part: ImageInput | AudioInput


@dataclass(frozen=True, slots=True)
class ResponseFormat:
    """What the output must be: "text" (anything), "json_object", "json_schema"
    (`schema` as JSON text, `strict`) or "grammar" (`grammar`, GBNF)."""

    type: str = "text"
    schema: str = ""
    strict: bool = False
    name: str = ""
    grammar: str = ""


@dataclass(frozen=True, slots=True)
class Sampling:
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stops: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    n: int = 1
    logprobs: bool = False
    top_logprobs: int = 0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias)
    response_format: ResponseFormat = field(default_factory=ResponseFormat)


@dataclass(frozen=True, slots=True)
class ChatRequest:
    model: str
    messages: tuple[Message, ...]
    sampling: Sampling = field(default_factory=Sampling)
    user: str = ""
    fallback_models: tuple[str, ...] = ()  # tried in order when `model` cannot serve
    allowed_models: tuple[str, ...] = ()  # the caller's models (a key's list); (): all
    configured_fallbacks: bool = True  # False: not the models file's fallbacks
    tools_json: str = ""  # OpenAI `tools`, JSON array text; "" when none
    tool_choice_json: str = ""  # OpenAI `tool_choice` as JSON; "" when unset
    parallel_tool_calls: bool | None = None
    # The caller takes the answer in one piece (a unary method): an upstream is
    # asked for one JSON answer, not a stream of chunks.
    whole: bool = False

    @property
    def media_needs(self) -> tuple[MediaNeed, ...]:
        """For each capability the request's parts need, the first part needing it."""
        first: dict[str, MediaNeed] = {}
        for i, message in enumerate(self.messages):
            for j, part in enumerate(message.parts):
                if isinstance(part, str):
                    continue
                capability = PART_CAPABILITY[type(part)]
                if capability not in first:
                    first[capability] = MediaNeed(capability, f"messages[{i}].content[{j}]", part)
        return tuple(first.values())

    @property
    def uses_tools(self) -> bool:
        return bool(self.tools_json or self.tool_choice_json) or any(
            m.tool_calls for m in self.messages
        )


Prompt = str | tuple[int, ...]  # text, or token ids


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    """A text completion: each prompt gets `sampling.n` choices, indexed
    prompt-major (prompt p's j-th choice is p * n + j)."""

    model: str
    prompts: tuple[Prompt, ...]
    sampling: Sampling = field(default_factory=Sampling)
    suffix: str = ""
    echo: bool = False
    best_of: int | None = None  # candidates per prompt; the n most likely are returned
    user: str = ""
    fallback_models: tuple[str, ...] = ()
    allowed_models: tuple[str, ...] = ()
    configured_fallbacks: bool = True
    whole: bool = False  # as ChatRequest's


@dataclass(frozen=True, slots=True)
class TopLogprob:
    token: str
    logprob: float
    bytes: bytes


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    token: str
    logprob: float
    bytes: bytes
    top: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True, slots=True)
class Delta:
    choice_index: int
    text: str
    logprobs: tuple[TokenLogprob, ...] = ()
    tool_calls: tuple[ToolCallDelta, ...] = ()
    tokens: int = 0  # generated tokens this text came from


@dataclass(frozen=True, slots=True)
class Finish:
    """The end of a generation: why each choice stopped and the exact token counts."""

    # choice index -> "stop" | "length" | "content_filter" | "tool_calls"
    finish_reasons: dict[int, str]
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class Routed:
    """Sent by the router before the first batch: the model that serves (after
    aliases and fallbacks)."""

    model: str
    provider: str = ""  # the model's owned_by


# A backend yields batches of deltas (all it had at the time) and then one Finish.
Event = list[Delta] | Finish


class Backend(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...


class ChatBackend(Backend, Protocol):
    def stream_chat(self, request: ChatRequest) -> AsyncGenerator[Event, None]: ...


@runtime_checkable
class CompletionBackend(Protocol):
    """A chat backend that also does text completions (OpenAI /completions)."""

    def stream_completion(self, request: CompletionRequest) -> AsyncGenerator[Event, None]: ...
