"""OpenAI chat completions on the wire <-> aqueduct.inference.v1 messages.

Parsing checks every field this gateway honours and names the offending one in
`param`; rendering produces OpenAI's `chat.completion` and `chat.completion.chunk`
shapes. Pure functions: no I/O, no grpc calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from aqueduct.inference.v1 import inference_pb2 as pb

from core.enum_names import FINISH_REASONS
from edge import schemas
from edge.errors import ApiError, invalid

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
MAX_FALLBACK_MODELS = 16
MAX_N = 128
MAX_TOP_LOGPROBS = 20
MAX_LOGIT_BIAS = 1024
# Accepted and passed on by OpenAI clients, but with no effect on generation here.
IGNORED_PARAMS = frozenset({"metadata", "store", "service_tier", "modalities", "prediction"})
# Tool calling: passed to upstreams; the local model refuses it (400).
TOOL_PARAMS = frozenset({"tools", "tool_choice", "parallel_tool_calls"})
TOOL_CHOICES = frozenset({"none", "auto", "required"})
MAX_TOOLS = 128
# Fields of OpenAI's API this version does not implement yet: refused, never dropped.
UNSUPPORTED_PARAMS = frozenset(
    {
        "functions",
        "function_call",
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


def object_with_model(body: object) -> tuple[dict[str, Any], str]:
    """The body as a JSON object and its `model`; what every endpoint checks first."""
    if not isinstance(body, dict):
        raise invalid(None, "The request body must be a JSON object.", "invalid_type")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid(
            "model",
            "'model' is required and must be a non-empty string.",
            "missing_required_parameter" if model is None else "invalid_type",
        )
    return body, model


def parse_chat_request(raw: object) -> ChatCall:
    body, model = object_with_model(raw)
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
    parallel = _optional_bool(body, "parallel_tool_calls")
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
    if any(isinstance(segment, FilePart) for segment in segments):
        return pb.ChatMessage(role=role, name=name or "", **extra), segments
    content = "\n".join(segment for segment in segments if isinstance(segment, str))
    return pb.ChatMessage(role=role, content=content, name=name or "", **extra), None


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


def _chat_logprobs(body: dict[str, Any], sampling: pb.SamplingParams) -> None:
    """`logprobs` (bool) and `top_logprobs` (0-20, needs `logprobs`)."""
    logprobs = _optional_bool(body, "logprobs") or False
    top = _optional_int(body, "top_logprobs", minimum=0)
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


def parse_logit_bias(body: dict[str, Any]) -> dict[int, float]:
    """`logit_bias`: token id (as a JSON object key) -> bias between -100 and 100."""
    bias = body.get("logit_bias")
    if bias is None:
        return {}
    if not isinstance(bias, dict):
        raise invalid(
            "logit_bias", "'logit_bias' must be an object of token id -> bias.", "invalid_type"
        )
    if len(bias) > MAX_LOGIT_BIAS:
        raise invalid(
            "logit_bias", f"'logit_bias' may hold at most {MAX_LOGIT_BIAS} tokens; got {len(bias)}."
        )
    parsed: dict[int, float] = {}
    for key, value in bias.items():
        if not (key.isascii() and key.isdigit()) or int(key) >= 2**31:
            raise invalid("logit_bias", f"'logit_bias' keys must be token ids; got '{key[:40]}'.")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise invalid("logit_bias", "'logit_bias' values must be numbers.", "invalid_type")
        if not -100 <= value <= 100:
            raise invalid(
                "logit_bias", f"'logit_bias' values must be between -100 and 100; got {value}."
            )
        parsed[int(key)] = float(value)
    return parsed


def parse_response_format(body: dict[str, Any]) -> pb.ResponseFormat | None:
    """`response_format`: text, json_object, json_schema (checked to be a valid
    JSON Schema) or grammar (`grammar` text, `syntax` "gbnf")."""
    value = body.get("response_format")
    if value is None:
        return None
    param = "response_format"
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise invalid(param, "'response_format' must be an object with a 'type'.", "invalid_type")
    kind = value["type"]
    if kind == "text":
        return pb.ResponseFormat(type=pb.RESPONSE_FORMAT_TYPE_TEXT)
    if kind == "json_object":
        return pb.ResponseFormat(type=pb.RESPONSE_FORMAT_TYPE_JSON_OBJECT)
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict):
            raise invalid(
                f"{param}.json_schema",
                "'response_format.json_schema' is required and must be an object.",
                "invalid_type",
            )
        name = spec.get("name")
        if not isinstance(name, str) or not name:
            raise invalid(
                f"{param}.json_schema.name",
                "'response_format.json_schema.name' is required and must be a non-empty string.",
                "missing_required_parameter",
            )
        schema = spec.get("schema", {})
        if not isinstance(schema, dict):
            raise invalid(
                f"{param}.json_schema.schema",
                "'response_format.json_schema.schema' must be a JSON Schema object.",
                "invalid_type",
            )
        problem = schemas.schema_problem(schema)
        if problem:
            raise invalid(
                f"{param}.json_schema.schema",
                f"'response_format.json_schema.schema' is not a valid JSON Schema: {problem}",
            )
        strict = _optional_bool(spec, "strict", f"{param}.json_schema.strict") or False
        return pb.ResponseFormat(
            type=pb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA,
            json_schema=orjson.dumps(schema).decode(),
            strict=strict,
            name=name,
        )
    if kind == "grammar":
        grammar = value.get("grammar")
        if not isinstance(grammar, str) or not grammar.strip():
            raise invalid(
                f"{param}.grammar",
                "'response_format.grammar' is required and must be a non-empty grammar string.",
                "missing_required_parameter",
            )
        syntax = value.get("syntax", "gbnf")
        if syntax != "gbnf":
            raise invalid(
                f"{param}.syntax",
                f"'response_format.syntax' must be 'gbnf' (llama.cpp grammars); got {syntax!r}.",
                "unsupported_value",
            )
        return pb.ResponseFormat(
            type=pb.RESPONSE_FORMAT_TYPE_GRAMMAR, grammar=grammar, grammar_syntax="gbnf"
        )
    raise invalid(
        f"{param}.type",
        "'response_format.type' must be one of text, json_object, json_schema, grammar; "
        f"got '{kind}'.",
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
    n = _optional_int(body, "n", minimum=1)
    if n is not None:
        if n > MAX_N:
            raise invalid("n", f"'n' must be between 1 and {MAX_N}; got {n}.")
        sampling.n = n
    for token, bias in parse_logit_bias(body).items():
        sampling.logit_bias[token] = bias
    response_format = parse_response_format(body)
    if response_format is not None:
        sampling.response_format.CopyFrom(response_format)
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


def parse_stream(body: dict[str, Any]) -> tuple[bool, bool]:
    """`stream`, and `stream_options.include_usage` (only allowed with a stream)."""
    stream = _optional_bool(body, "stream") or False
    options = body.get("stream_options")
    if options is None:
        return stream, False
    if not isinstance(options, dict):
        raise invalid("stream_options", "'stream_options' must be an object.", "invalid_type")
    if not stream:
        raise invalid("stream_options", "'stream_options' is only allowed when 'stream' is true.")
    include_usage = _optional_bool(options, "include_usage", "stream_options.include_usage")
    return stream, include_usage or False


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
    provider: str = ""


def usage_json(usage: pb.Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


def token_logprob_json(entry: pb.TokenLogprob) -> dict[str, Any]:
    """One entry of a chat choice's `logprobs.content`."""
    return {
        "token": entry.token,
        "logprob": entry.logprob,
        "bytes": list(entry.bytes),
        "top_logprobs": [
            {"token": t.token, "logprob": t.logprob, "bytes": list(t.bytes)}
            for t in entry.top_logprobs
        ],
    }


@dataclass
class ChoiceText:
    """One choice's text, log probabilities and tool calls, gathered from the stream."""

    parts: list[str]
    logprobs: list[pb.TokenLogprob]
    tool_calls: dict[int, pb.ToolCallDelta] = field(default_factory=dict)


def sse_chunk(
    meta: Completion, kind: str, choices: list[dict[str, Any]], include_usage: bool, usage: object
) -> bytes:
    """One `data:` event of a stream (chat or text completion); `usage` only when asked."""
    chunk: dict[str, Any] = {
        "id": meta.id,
        "object": kind,
        "created": meta.created,
        "model": meta.model,
        "provider": meta.provider or None,
        "system_fingerprint": None,
        "choices": choices,
    }
    if include_usage:
        chunk["usage"] = usage
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def gather(choices: dict[int, ChoiceText], batch: pb.DeltaBatch) -> None:
    """Add a batch's deltas to each choice's text (a whole, non-streamed answer)."""
    for delta in shown(batch):
        _add(choices.setdefault(delta.choice_index, ChoiceText([], [])), delta)


def each_delta(batch: pb.DeltaBatch) -> list[tuple[int, ChoiceText]]:
    """Each delta of a batch on its own (one stream event each, as the backend cut them)."""
    pieces = []
    for delta in shown(batch):
        choice = ChoiceText([], [])
        _add(choice, delta)
        pieces.append((delta.choice_index, choice))
    return pieces


def shown(batch: pb.DeltaBatch) -> list[pb.Delta]:
    # A delta without text is a token still held back (a possible stop): nothing to show.
    return [d for d in batch.deltas if d.content or d.logprobs or d.tool_calls]


def _add(choice: ChoiceText, delta: pb.Delta) -> None:
    choice.parts.append(delta.content)
    choice.logprobs.extend(delta.logprobs)
    for part in delta.tool_calls:
        call = choice.tool_calls.setdefault(part.index, pb.ToolCallDelta(index=part.index))
        call.id = call.id or part.id
        call.name = call.name or part.name
        call.arguments += part.arguments


def tool_call_json(call: pb.ToolCallDelta, stream: bool) -> dict[str, Any]:
    """A tool call in a message, or its part in a stream delta (id and name once)."""
    function: dict[str, Any] = {"arguments": call.arguments}
    if call.name or not stream:
        function["name"] = call.name
    rendered: dict[str, Any] = {"id": call.id, "type": "function", "function": function}
    if stream:
        rendered = {"index": call.index, "function": function}
        if call.id:
            rendered.update(id=call.id, type="function")
    return rendered


def _message(choice: ChoiceText) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(choice.parts),
        "refusal": None,
    }
    if choice.tool_calls:
        message["content"] = message["content"] or None
        message["tool_calls"] = [
            tool_call_json(c, stream=False) for _, c in sorted(choice.tool_calls.items())
        ]
    return message


def completion_json(
    meta: Completion, choices: dict[int, ChoiceText], summary: pb.Summary, logprobs: bool
) -> bytes:
    finish = {
        end.choice_index: FINISH_REASONS.get(end.finish_reason) for end in summary.choice_ends
    }
    indexes = sorted(set(finish) | set(choices)) or [0]
    empty = ChoiceText([], [])
    return orjson.dumps(
        {
            "id": meta.id,
            "object": "chat.completion",
            "created": meta.created,
            "model": summary.model or meta.model,
            "provider": summary.provider or meta.provider or None,
            "choices": [
                {
                    "index": index,
                    "message": _message(choices.get(index, empty)),
                    "logprobs": {
                        "content": [
                            token_logprob_json(e) for e in choices.get(index, empty).logprobs
                        ],
                        "refusal": None,
                    }
                    if logprobs
                    else None,
                    "finish_reason": finish.get(index) or "stop",
                }
                for index in indexes
            ],
            "usage": usage_json(summary.usage),
            "system_fingerprint": None,
        }
    )


TEXT_SLOT = "\ufdd0aqueduct-text\ufdd0"  # a noncharacter: never in a model's text


class ChatWriter:
    """Renders stream messages as SSE `data:` events, one bytes object per message."""

    def __init__(
        self, meta: Completion, include_usage: bool, n: int = 1, logprobs: bool = False
    ) -> None:
        self.meta = meta
        self.include_usage = include_usage
        self.n = n
        self.logprobs = logprobs
        # (choice, model, provider) -> the bytes around a text delta's content
        self._text_events: dict[tuple[int, str, str], tuple[bytes, bytes]] = {}

    def _chunk(self, choices: list[dict[str, Any]], usage: object = None) -> bytes:
        return sse_chunk(self.meta, "chat.completion.chunk", choices, self.include_usage, usage)

    def _text_event(self, index: int, text: str) -> bytes:
        """A plain text delta: the same bytes `_chunk` makes, from a template, since
        a stream is mostly these and only their text differs (~1 µs, not ~8)."""
        key = (index, self.meta.model, self.meta.provider)
        if (around := self._text_events.get(key)) is None:
            choice = {
                "index": index,
                "delta": {"content": TEXT_SLOT},
                "logprobs": None,
                "finish_reason": None,
            }
            head, _, tail = self._chunk([choice]).rpartition(orjson.dumps(TEXT_SLOT))
            around = self._text_events[key] = (head, tail)
        return around[0] + orjson.dumps(text) + around[1]

    def start(self) -> bytes:
        """The first event of each choice: the assistant role, as OpenAI sends it."""
        return b"".join(
            self._chunk(
                [
                    {
                        "index": index,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                ]
            )
            for index in range(self.n)
        )

    def deltas(self, batch: pb.DeltaBatch) -> bytes:
        """One event per delta, all of the batch in one write."""
        if not self.logprobs and not any(d.tool_calls for d in batch.deltas):
            return b"".join(self._text_event(d.choice_index, d.content) for d in shown(batch))
        return b"".join(
            self._chunk(
                [
                    {
                        "index": index,
                        "delta": _delta(choice),
                        "logprobs": {
                            "content": [token_logprob_json(e) for e in choice.logprobs],
                            "refusal": None,
                        }
                        if self.logprobs
                        else None,
                        "finish_reason": None,
                    }
                ]
            )
            for index, choice in each_delta(batch)
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


def _delta(choice: ChoiceText) -> dict[str, Any]:
    delta: dict[str, Any] = {"content": "".join(choice.parts)}
    if choice.tool_calls:
        delta["tool_calls"] = [
            tool_call_json(c, stream=True) for _, c in sorted(choice.tool_calls.items())
        ]
        delta["content"] = delta["content"] or None
    return delta


def error_event(error: ApiError) -> bytes:
    return b"data: " + error.json() + b"\n\n"
