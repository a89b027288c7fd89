"""OpenAI chat completion requests -> aqueduct.inference.v1 messages.

Checks every field this gateway honours and names the offending one in
`param`. Pure: no I/O, no grpc calls.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson
from aqueduct.inference.v1 import inference_pb2 as pb

from core.media import IMAGE_TYPES
from edge.errors import invalid
from edge.request_fields import (
    UNSUPPORTED_PARAMS,
    object_with_model,
    optional_bool,
    optional_int,
    parse_fallback_models,
    parse_sampling,
    parse_stream,
)

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
MAX_TOP_LOGPROBS = 20
TOOL_CHOICES = frozenset({"none", "auto", "required"})
MAX_TOOLS = 128
IMAGE_DETAILS = frozenset({"auto", "low", "high"})
AUDIO_FORMATS = frozenset({"wav", "mp3"})
MAX_IMAGE_URL_CHARS = 8192  # a remote image's URL; data URLs are limited by size


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
class ImageSegment:
    """An `image_url` part: a remote URL (passed on as given, never fetched
    here) or a data URL whose payload edge/file_parts.py decodes."""

    param: str
    url: str = ""  # a remote http(s) URL
    media_type: str = ""  # a data URL's
    base64_data: str = ""  # a data URL's payload, still encoded
    detail: str = ""
    # Where the URL itself was, if not `{param}.image_url.url` (a Responses
    # API input_image has it in `image_url`).
    url_param: str = ""


@dataclass(frozen=True)
class AudioSegment:
    """An `input_audio` part; edge/file_parts.py decodes its data."""

    param: str
    base64_data: str
    format: str


Segment = str | FilePart | ImageSegment | AudioSegment


@dataclass(frozen=True)
class PendingContent:
    """A message whose content has file, image or audio parts: its parts in
    order. Once resolved, a message without images or audio gets its text
    joined with newlines into `content`; one with them gets `parts`."""

    message_index: int
    segments: tuple[Segment, ...]
    message: pb.ChatMessage  # the request's message, filled in when resolved


@dataclass(frozen=True)
class ChatCall:
    """A validated chat request: what to send to inference, how to answer."""

    request: pb.StreamChatCompletionRequest
    stream: bool
    include_usage: bool
    # Messages with file parts; their content in `request` is empty until resolved.
    pending: tuple[PendingContent, ...] = ()


def parse_chat_request(raw: object) -> ChatCall:
    body, model = object_with_model(raw)
    parsed = [_parse_message(index, m) for index, m in enumerate(_messages(body))]
    messages = [message for message, _ in parsed]
    for name in UNSUPPORTED_PARAMS:
        if body.get(name) not in (None, [], {}):
            raise invalid(
                name, f"'{name}' is not supported by this gateway yet.", "unsupported_parameter"
            )
    stream, include_usage = parse_stream(body)
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise invalid("user", "'user' must be a string.", "invalid_type")
    sampling = parse_sampling(body)
    _chat_logprobs(body, sampling)
    request = pb.StreamChatCompletionRequest(
        model=model,
        messages=messages,
        sampling=sampling,
        user=user or "",
        fallback_models=parse_fallback_models(body),
    )
    _parse_tools(body, request)
    pending = tuple(
        PendingContent(index, segments, request.messages[index])
        for index, (_, segments) in enumerate(parsed)
        if segments is not None
    )
    return ChatCall(request=request, stream=stream, include_usage=include_usage, pending=pending)


def _parse_tools(body: dict[str, Any], request: pb.StreamChatCompletionRequest) -> None:
    """`tools` (function tools), `tool_choice`, `parallel_tool_calls`: checked here,
    passed on as JSON."""
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise invalid("tools", "'tools' must be an array of tools.", "invalid_type")
        if len(tools) > MAX_TOOLS:
            raise invalid("tools", f"'tools' may hold at most {MAX_TOOLS} tools; got {len(tools)}.")
        for i, tool in enumerate(tools):
            where = f"tools[{i}]"
            if not isinstance(tool, dict) or tool.get("type") != "function":
                raise invalid(where, f"'{where}' must be an object with 'type': 'function'.")
            function = tool.get("function")
            if not isinstance(function, dict) or not _is_name(function.get("name")):
                raise invalid(
                    f"{where}.function.name",
                    f"'{where}.function.name' is required: letters, digits, '_' and '-', "
                    "at most 64 characters.",
                )
            parameters = function.get("parameters")
            if parameters is not None and not isinstance(parameters, dict):
                raise invalid(
                    f"{where}.function.parameters",
                    f"'{where}.function.parameters' must be a JSON Schema object.",
                    "invalid_type",
                )
        if tools:
            request.tools_json = _json_text("tools", tools)
    choice = body.get("tool_choice")
    if choice is not None:
        named = (
            isinstance(choice, dict)
            and choice.get("type") == "function"
            and isinstance(choice.get("function"), dict)
            and _is_name(choice["function"].get("name"))
        )
        if not (isinstance(choice, str) and choice in TOOL_CHOICES) and not named:
            raise invalid(
                "tool_choice",
                "'tool_choice' must be 'none', 'auto', 'required' or "
                '{"type": "function", "function": {"name": ...}}.',
            )
        if choice != "none" and not request.tools_json:
            raise invalid("tool_choice", "'tool_choice' needs 'tools'.")
        request.tool_choice_json = _json_text("tool_choice", choice)
    parallel = optional_bool(body, "parallel_tool_calls")
    if parallel is not None:
        request.parallel_tool_calls = parallel


def _json_text(param: str, value: object) -> str:
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:  # deeper than orjson writes
        raise invalid(param, f"'{param}' is nested too deeply.") from None


def _is_name(value: object) -> bool:
    return (
        isinstance(value, str)
        and 0 < len(value) <= 64
        and all(c.isascii() and (c.isalnum() or c in "_-") for c in value)
    )


def _tool_calls(where: str, value: object) -> list[pb.ToolCall]:
    """An assistant message's `tool_calls`."""
    param = f"{where}.tool_calls"
    if not isinstance(value, list):
        raise invalid(param, f"'{param}' must be an array.", "invalid_type")
    calls = []
    for i, call in enumerate(value):
        function = call.get("function") if isinstance(call, dict) else None
        if (
            not isinstance(call, dict)
            or not isinstance(call.get("id"), str)
            or not isinstance(function, dict)
            or not isinstance(function.get("name"), str)
            or not isinstance(function.get("arguments"), str)
        ):
            raise invalid(
                f"{param}[{i}]",
                f"'{param}[{i}]' must be {{'id', 'type': 'function', "
                "'function': {'name', 'arguments'}} with string values.",
                "invalid_type",
            )
        calls.append(
            pb.ToolCall(id=call["id"], name=function["name"], arguments=function["arguments"])
        )
    return calls


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
) -> tuple[pb.ChatMessage, tuple[Segment, ...] | None]:
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
    extra: dict[str, Any] = {}
    if role == "assistant" and message.get("tool_calls") is not None:
        extra["tool_calls"] = _tool_calls(where, message["tool_calls"])
    call_id = message.get("tool_call_id")
    if role == "tool":
        if not isinstance(call_id, str) or not call_id:
            raise invalid(
                f"{where}.tool_call_id",
                f"'{where}.tool_call_id' is required for role 'tool'.",
                "missing_required_parameter",
            )
        extra["tool_call_id"] = call_id
    if any(not isinstance(segment, str) for segment in segments):
        return pb.ChatMessage(role=role, name=name or "", **extra), segments
    content = "\n".join(segment for segment in segments if isinstance(segment, str))
    return pb.ChatMessage(role=role, content=content, name=name or "", **extra), None


def _content_segments(where: str, role: str, content: object) -> tuple[Segment, ...]:
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
    texts: list[Segment] = []
    for i, part in enumerate(content):
        part_param = f"{param}[{i}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise invalid(
                part_param, f"'{part_param}' must be an object with a 'type'.", "invalid_type"
            )
        if role == "user" and part["type"] in USER_PARTS:
            texts.append(USER_PARTS[part["type"]](part_param, part))
            continue
        if part["type"] != "text":
            allowed = (
                "'text', 'image_url', 'input_audio' and 'file' parts are"
                if role == "user"
                else "'text' parts are"
            )
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


def _image_part(param: str, part: dict[str, Any]) -> ImageSegment:
    """Check an `image_url` part; a data URL's payload is decoded in edge/file_parts.py."""
    image = part.get("image_url")
    if not isinstance(image, dict):
        raise invalid(
            f"{param}.image_url", f"'{param}.image_url' must be an object.", "invalid_type"
        )
    where = f"{param}.image_url.url"
    url = image.get("url")
    if not isinstance(url, str) or not url:
        raise invalid(where, f"'{where}' is required: a URL or a data URL.", "invalid_type")
    detail = image.get("detail")
    if detail is not None and detail not in IMAGE_DETAILS:
        raise invalid(
            f"{param}.image_url.detail",
            f"'{param}.image_url.detail' must be one of auto, high, low.",
        )
    if url.startswith("data:"):
        media, payload = _data_url(url)
        if payload is None:
            raise invalid(
                where, f"'{where}' is not a valid data URL: 'data:<image type>;base64,<data>'."
            )
        if media not in IMAGE_TYPES:
            raise invalid(
                where,
                f"'{where}' has media type '{media[:100]}'; images must be one of "
                f"{', '.join(IMAGE_TYPES)}.",
                "unsupported_media_type",
            )
        return ImageSegment(param, media_type=media, base64_data=payload, detail=detail or "")
    if len(url) > MAX_IMAGE_URL_CHARS:
        raise invalid(
            where, f"'{where}' is {len(url)} characters long; the limit is {MAX_IMAGE_URL_CHARS}."
        )
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises for a port that is not a number in range
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise invalid(where, f"'{where}' must be an http(s) URL or a data URL.")
    return ImageSegment(param, url=url, detail=detail or "")


def _audio_part(param: str, part: dict[str, Any]) -> AudioSegment:
    """Check an `input_audio` part; its data is decoded in edge/file_parts.py."""
    audio = part.get("input_audio")
    if not isinstance(audio, dict):
        raise invalid(
            f"{param}.input_audio", f"'{param}.input_audio' must be an object.", "invalid_type"
        )
    data, audio_format = audio.get("data"), audio.get("format")
    if not isinstance(data, str) or not data:
        raise invalid(
            f"{param}.input_audio.data",
            f"'{param}.input_audio.data' is required: base64-encoded audio.",
            "invalid_type",
        )
    if audio_format not in AUDIO_FORMATS:
        raise invalid(
            f"{param}.input_audio.format",
            f"'{param}.input_audio.format' must be one of {', '.join(sorted(AUDIO_FORMATS))}.",
            "unsupported_media_type",
        )
    return AudioSegment(param, data, str(audio_format))


USER_PARTS: dict[str, Callable[[str, dict[str, Any]], Segment]] = {
    "file": _file_part,
    "image_url": _image_part,
    "input_audio": _audio_part,
}


def _data_url(value: object) -> tuple[str, str | None]:
    """(media type, base64 payload) of `data:<media type>;base64,<payload>`."""
    if not isinstance(value, str) or not value.startswith("data:"):
        return "", None
    header, comma, payload = value[5:].partition(",")
    fields = header.split(";")
    if not comma or "base64" not in fields[1:]:
        return "", None
    return fields[0].strip().lower(), payload


def _chat_logprobs(body: dict[str, Any], sampling: pb.SamplingParams) -> None:
    """`logprobs` (bool) and `top_logprobs` (0-20, needs `logprobs`)."""
    logprobs = optional_bool(body, "logprobs") or False
    top = optional_int(body, "top_logprobs", minimum=0)
    if top is not None:
        if top > MAX_TOP_LOGPROBS:
            raise invalid(
                "top_logprobs",
                f"'top_logprobs' must be between 0 and {MAX_TOP_LOGPROBS}; got {top}.",
            )
        if not logprobs:
            raise invalid("top_logprobs", "'top_logprobs' requires 'logprobs' to be true.")
        sampling.top_logprobs = top
    sampling.logprobs = logprobs
