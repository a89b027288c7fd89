"""OpenAI chat completions on the wire <-> aqueduct.inference.v1 messages.

Parsing checks every field this gateway honours and names the offending one in
`param`; rendering produces OpenAI's `chat.completion` and `chat.completion.chunk`
shapes. Pure functions: no I/O, no grpc calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from aqueduct.inference.v1 import inference_pb2 as pb

from edge.errors import ApiError, invalid

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
FINISH_REASONS = {
    pb.FINISH_REASON_STOP: "stop",
    pb.FINISH_REASON_LENGTH: "length",
    pb.FINISH_REASON_CONTENT_FILTER: "content_filter",
}
MAX_FALLBACK_MODELS = 16
# Accepted and passed on by OpenAI clients, but with no effect on generation here.
IGNORED_PARAMS = frozenset({"metadata", "store", "service_tier", "modalities", "prediction"})
# Fields of OpenAI's API this version does not implement yet: refused, never dropped.
UNSUPPORTED_PARAMS = frozenset(
    {
        "tools",
        "tool_choice",
        "functions",
        "function_call",
        "parallel_tool_calls",
        "audio",
        "web_search_options",
        "reasoning_effort",
    }
)


@dataclass(frozen=True)
class FilePart:
    """A `file` content part, kept as it was sent; edge/file_parts.py turns it
    into text (that needs the files service, so it is not done here)."""

    param: str  # where it was, e.g. "messages[0].content[1]"
    file_id: str | None = None
    filename: str | None = None
    media_type: str = ""  # from the data URL
    base64_data: str = ""  # the data URL's payload, still encoded


@dataclass(frozen=True)
class PendingContent:
    """A message whose content has file parts: its parts in order, joined with
    newlines into the message's content once every file part is text."""

    message_index: int
    segments: tuple[str | FilePart, ...]


@dataclass(frozen=True)
class ChatCall:
    """A validated chat request: what to send to inference, how to answer."""

    request: pb.StreamChatCompletionRequest
    stream: bool
    include_usage: bool
    # Messages with file parts; their content in `request` is empty until resolved.
    pending: tuple[PendingContent, ...] = ()


def parse_chat_request(body: object) -> ChatCall:
    if not isinstance(body, dict):
        raise invalid(None, "The request body must be a JSON object.", "invalid_type")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid(
            "model",
            "'model' is required and must be a non-empty string.",
            "missing_required_parameter" if model is None else "invalid_type",
        )
    parsed = [_parse_message(index, m) for index, m in enumerate(_messages(body))]
    messages = [message for message, _ in parsed]
    pending = tuple(
        PendingContent(index, segments)
        for index, (_, segments) in enumerate(parsed)
        if segments is not None
    )
    for name in UNSUPPORTED_PARAMS:
        if body.get(name) not in (None, [], {}):
            raise invalid(
                name, f"'{name}' is not supported by this gateway yet.", "unsupported_parameter"
            )
    _check_not_yet(body)
    stream = _optional_bool(body, "stream") or False
    include_usage = False
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise invalid("stream_options", "'stream_options' must be an object.", "invalid_type")
        if not stream:
            raise invalid(
                "stream_options", "'stream_options' is only allowed when 'stream' is true."
            )
        include_usage = (
            _optional_bool(options, "include_usage", "stream_options.include_usage") or False
        )
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise invalid("user", "'user' must be a string.", "invalid_type")
    request = pb.StreamChatCompletionRequest(
        model=model,
        messages=messages,
        sampling=parse_sampling(body),
        user=user or "",
        fallback_models=parse_fallback_models(body),
    )
    return ChatCall(request=request, stream=stream, include_usage=include_usage, pending=pending)


def parse_fallback_models(body: dict[str, Any]) -> list[str]:
    """`models`: ids to try in order when `model` cannot serve (OpenRouter's field)."""
    models = body.get("models")
    if models is None:
        return []
    if not isinstance(models, list) or not all(isinstance(m, str) and m for m in models):
        raise invalid("models", "'models' must be an array of model ids.", "invalid_type")
    if len(models) > MAX_FALLBACK_MODELS:
        raise invalid(
            "models", f"'models' may list at most {MAX_FALLBACK_MODELS} ids; got {len(models)}."
        )
    return models


def _messages(body: dict[str, Any]) -> list[Any]:
    messages = body.get("messages")
    if messages is None:
        raise invalid("messages", "'messages' is required.", "missing_required_parameter")
    if not isinstance(messages, list):
        raise invalid("messages", "'messages' must be an array.", "invalid_type")
    if not messages:
        raise invalid("messages", "'messages' must contain at least one message.")
    return messages


def _parse_message(
    index: int, message: object
) -> tuple[pb.ChatMessage, tuple[str | FilePart, ...] | None]:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise invalid(where, f"'{where}' must be an object.", "invalid_type")
    role = message.get("role")
    if not isinstance(role, str):
        raise invalid(
            f"{where}.role", f"'{where}.role' is required and must be a string.", "invalid_type"
        )
    if role not in ROLES:
        raise invalid(
            f"{where}.role",
            f"'{where}.role' must be one of {', '.join(sorted(ROLES))}; got '{role}'.",
        )
    name = message.get("name")
    if name is not None and not isinstance(name, str):
        raise invalid(f"{where}.name", f"'{where}.name' must be a string.", "invalid_type")
    segments = _content_segments(where, role, message.get("content"))
    if any(isinstance(segment, FilePart) for segment in segments):
        return pb.ChatMessage(role=role, name=name or ""), segments
    content = "\n".join(segment for segment in segments if isinstance(segment, str))
    return pb.ChatMessage(role=role, content=content, name=name or ""), None


def _content_segments(where: str, role: str, content: object) -> tuple[str | FilePart, ...]:
    param = f"{where}.content"
    if isinstance(content, str):
        return (content,)
    if content is None:
        if role == "assistant":
            return ("",)
        raise invalid(
            param, f"'{param}' is required for role '{role}'.", "missing_required_parameter"
        )
    if not isinstance(content, list):
        raise invalid(
            param, f"'{param}' must be a string or an array of content parts.", "invalid_type"
        )
    texts: list[str | FilePart] = []
    for i, part in enumerate(content):
        part_param = f"{param}[{i}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise invalid(
                part_param, f"'{part_param}' must be an object with a 'type'.", "invalid_type"
            )
        if part["type"] == "file" and role == "user":
            texts.append(_file_part(part_param, part))
            continue
        if part["type"] != "text":
            allowed = "'text' and 'file' parts are" if role == "user" else "'text' parts are"
            raise invalid(
                f"{part_param}.type",
                f"Content parts of type '{part['type']}' are not supported in '{role}' "
                f"messages by this gateway; only {allowed}.",
                "unsupported_content_type",
            )
        text = part.get("text")
        if not isinstance(text, str):
            raise invalid(
                f"{part_param}.text", f"'{part_param}.text' must be a string.", "invalid_type"
            )
        texts.append(text)
    return tuple(texts)


def _file_part(param: str, part: dict[str, Any]) -> FilePart:
    """Check a `file` part's shape; its bytes are looked at in edge/file_parts.py."""
    file = part.get("file")
    if not isinstance(file, dict):
        raise invalid(f"{param}.file", f"'{param}.file' must be an object.", "invalid_type")
    filename = file.get("filename")
    if filename is not None and not isinstance(filename, str):
        raise invalid(
            f"{param}.file.filename", f"'{param}.file.filename' must be a string.", "invalid_type"
        )
    file_id, file_data = file.get("file_id"), file.get("file_data")
    if (file_id is None) == (file_data is None):
        raise invalid(
            f"{param}.file",
            f"'{param}.file' needs exactly one of 'file_id' or 'file_data'.",
            "missing_required_parameter" if file_id is None else "invalid_value",
        )
    if file_id is not None:
        if not isinstance(file_id, str) or not file_id:
            raise invalid(
                f"{param}.file.file_id",
                f"'{param}.file.file_id' must be a non-empty string.",
                "invalid_type",
            )
        return FilePart(param=param, file_id=file_id, filename=filename)
    media, payload = _data_url(file_data)
    if payload is None:
        raise invalid(
            f"{param}.file.file_data",
            f"'{param}.file.file_data' must be a data URL: 'data:<media type>;base64,<data>'.",
        )
    return FilePart(param=param, filename=filename, media_type=media, base64_data=payload)


def _data_url(value: object) -> tuple[str, str | None]:
    """(media type, base64 payload) of `data:<media type>;base64,<payload>`."""
    if not isinstance(value, str) or not value.startswith("data:"):
        return "", None
    header, comma, payload = value[5:].partition(",")
    fields = header.split(";")
    if not comma or "base64" not in fields[1:]:
        return "", None
    return fields[0].strip().lower(), payload


def _check_not_yet(body: dict[str, Any]) -> None:
    """Parameters whose non-default values this version cannot honour yet."""
    n = body.get("n")
    if n is not None and (not _is_int(n) or n != 1):
        raise invalid("n", "Only 'n': 1 is supported by this gateway yet.", "unsupported_value")
    if body.get("logprobs") not in (None, False):
        raise invalid(
            "logprobs", "'logprobs' is not supported by this gateway yet.", "unsupported_parameter"
        )
    if body.get("top_logprobs") is not None:
        raise invalid(
            "top_logprobs",
            "'top_logprobs' is not supported by this gateway yet.",
            "unsupported_parameter",
        )
    if body.get("logit_bias") not in (None, {}):
        raise invalid(
            "logit_bias",
            "'logit_bias' is not supported by this gateway yet.",
            "unsupported_parameter",
        )
    response_format = body.get("response_format")
    if response_format is not None and response_format != {"type": "text"}:
        raise invalid(
            "response_format",
            'Only \'response_format\' {"type": "text"} is supported by this gateway yet.',
            "unsupported_value",
        )


def parse_sampling(body: dict[str, Any]) -> pb.SamplingParams:
    sampling = pb.SamplingParams()
    max_tokens = _optional_int(body, "max_completion_tokens", minimum=1)
    if max_tokens is None:
        max_tokens = _optional_int(body, "max_tokens", minimum=1)
    if max_tokens is not None:
        sampling.max_tokens = min(max_tokens, 2**31 - 1)
    for name, low, high in (
        ("temperature", 0.0, 2.0),
        ("top_p", 0.0, 1.0),
        ("presence_penalty", -2.0, 2.0),
        ("frequency_penalty", -2.0, 2.0),
    ):
        value = _optional_number(body, name, low, high)
        if value is not None:
            setattr(sampling, name, value)
    seed = _optional_int(body, "seed", minimum=-(2**63))
    if seed is not None:
        sampling.seed = seed
    sampling.stops.extend(_stops(body.get("stop")))
    return sampling


def _stops(stop: object) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop] if stop else []
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise invalid("stop", "'stop' must be a string or an array of strings.", "invalid_type")
    if len(stop) > 4:
        raise invalid("stop", f"'stop' may hold at most 4 sequences; got {len(stop)}.")
    return [s for s in stop if s]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _optional_bool(body: dict[str, Any], name: str, param: str | None = None) -> bool | None:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise invalid(param or name, f"'{param or name}' must be a boolean.", "invalid_type")
    return value


def _optional_int(body: dict[str, Any], name: str, minimum: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not _is_int(value):
        raise invalid(name, f"'{name}' must be an integer.", "invalid_type")
    if value < minimum or value >= 2**63:
        raise invalid(name, f"'{name}' must be at least {minimum}; got {value}.")
    return int(value)


def _optional_number(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid(name, f"'{name}' must be a number.", "invalid_type")
    if not low <= value <= high:
        raise invalid(name, f"'{name}' must be between {low:g} and {high:g}; got {value}.")
    return float(value)


# --- rendering ---------------------------------------------------------------


@dataclass
class Completion:
    """What the client is told about one completion, filled in as the stream runs."""

    id: str
    created: int
    model: str


def usage_json(usage: pb.Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


def completion_json(meta: Completion, text: str, summary: pb.Summary) -> bytes:
    finish = {
        end.choice_index: FINISH_REASONS.get(end.finish_reason) for end in summary.choice_ends
    }
    return orjson.dumps(
        {
            "id": meta.id,
            "object": "chat.completion",
            "created": meta.created,
            "model": summary.model or meta.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": finish.get(0, "stop"),
                }
            ],
            "usage": usage_json(summary.usage),
            "system_fingerprint": None,
        }
    )


class ChatWriter:
    """Renders stream messages as SSE `data:` events, one bytes object per message."""

    def __init__(self, meta: Completion, include_usage: bool) -> None:
        self.meta = meta
        self.include_usage = include_usage
        self._prefix = b""

    def _chunk(self, choices: list[dict[str, Any]], usage: object = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": self.meta.id,
            "object": "chat.completion.chunk",
            "created": self.meta.created,
            "model": self.meta.model,
            "system_fingerprint": None,
            "choices": choices,
        }
        if self.include_usage:
            chunk["usage"] = usage
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def start(self) -> bytes:
        """The first event: the assistant role, as OpenAI sends it."""
        return self._chunk(
            [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ]
        )

    def deltas(self, batch: pb.DeltaBatch) -> bytes:
        # Merge a batch's deltas per choice: one event carries what one read gave.
        texts: dict[int, list[str]] = {}
        for delta in batch.deltas:
            texts.setdefault(delta.choice_index, []).append(delta.content)
        return b"".join(
            self._chunk(
                [
                    {
                        "index": index,
                        "delta": {"content": "".join(parts)},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                ]
            )
            for index, parts in texts.items()
        )

    def finish(self, summary: pb.Summary) -> bytes:
        events = [
            self._chunk(
                [
                    {
                        "index": end.choice_index,
                        "delta": {},
                        "logprobs": None,
                        "finish_reason": FINISH_REASONS.get(end.finish_reason, "stop"),
                    }
                ]
            )
            for end in summary.choice_ends
        ]
        if self.include_usage:
            events.append(self._chunk([], usage_json(summary.usage)))
        events.append(b"data: [DONE]\n\n")
        return b"".join(events)


def error_event(error: ApiError) -> bytes:
    return b"data: " + error.json() + b"\n\n"
