"""OpenAI Responses requests -> the chat generation the edge already does.

A Responses body is translated into a chat completion body (items -> messages,
`input_text` -> `text` parts, `input_file` -> `file` parts, `input_image` ->
`image_url` parts, function tools, `text.format` -> `response_format`) and
checked by the chat parser, so files, images, tools and structured output follow
chat's rules exactly. An error the chat parser finds is renamed to the field the
client sent (`messages[2].content[0]` -> `input[1].content[0]`). Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
from dataclasses import dataclass
from typing import Any

import orjson
from aqueduct.inference.v1 import inference_pb2 as pb

from edge.chat_request import (
    FilePart,
    ImageSegment,
    PendingContent,
    Segment,
    parse_chat_request,
)
from edge.errors import ApiError, invalid
from edge.request_fields import object_with_model, optional_bool

# Every field this gateway honours; any other is a 400 naming it, never dropped.
FIELDS = frozenset(
    {
        "model",
        "input",
        "instructions",
        "max_output_tokens",
        "temperature",
        "top_p",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "text",
        "metadata",
        "user",
        "store",
        "stream",
        "background",
        "include",
        "truncation",
        "models",
        "previous_response_id",
    }
)
ROLES = frozenset({"user", "system", "developer", "assistant"})
MAX_METADATA_KEYS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
_ITEM_KEYS = {
    "message": frozenset({"type", "role", "content", "id", "status"}),
    "function_call": frozenset({"type", "call_id", "name", "arguments", "id", "status"}),
    "function_call_output": frozenset({"type", "call_id", "output", "id", "status"}),
}
_PART_KEYS = {
    "input_text": frozenset({"type", "text"}),
    "output_text": frozenset({"type", "text", "annotations", "logprobs"}),
    "input_file": frozenset({"type", "file_id", "file_data", "filename"}),
    "input_image": frozenset({"type", "image_url", "file_id", "detail"}),
}
_TOOL_KEYS = frozenset({"type", "name", "description", "parameters", "strict"})
_FORMAT_KEYS = frozenset({"type", "name", "schema", "strict", "description"})
_CHAT_MESSAGE = re.compile(r"^messages\[(\d+)\]")


@dataclass(frozen=True)
class ResponsesCall:
    """A validated Responses request: the chat generation to run, and what the
    response object repeats back to the client."""

    request: pb.StreamChatCompletionRequest
    stream: bool
    pending: tuple[PendingContent, ...]
    echo: dict[str, Any]  # the request's fields as the response object shows them
    store: bool
    body: dict[str, Any]  # as sent: parsed again once a previous conversation is known
    input_items: list[dict[str, Any]]  # this request's input, as input_items lists it
    previous_response_id: str | None = None
    conversation: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def parse_responses_request(
    raw: object, conversation: list[dict[str, Any]] | None = None
) -> ResponsesCall:
    """`conversation`: the stored items a `previous_response_id` continues, once
    fetched; they come before `input`."""
    body, model = object_with_model(raw)
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise invalid(
            unknown[0],
            f"'{unknown[0]}' is not supported by this gateway's Responses API.",
            "unsupported_parameter",
        )
    _refuse_unsupported_values(body)
    store = optional_bool(body, "store")
    previous = body.get("previous_response_id")
    if previous is not None and (not isinstance(previous, str) or not previous):
        raise invalid(
            "previous_response_id", "'previous_response_id' must be a string.", "invalid_type"
        )
    stream = optional_bool(body, "stream") or False
    translation = _Translation()
    chat: dict[str, Any] = {
        "model": model,
        "messages": translation.messages(
            body.get("instructions"), body.get("input"), conversation or []
        ),
        "stream": stream,
    }
    for name, chat_name in (
        ("max_output_tokens", "max_completion_tokens"),
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("parallel_tool_calls", "parallel_tool_calls"),
        ("user", "user"),
        ("models", "models"),
    ):
        if body.get(name) is not None:
            chat[chat_name] = body[name]
    tools = _tools(body.get("tools"))
    if tools:
        chat["tools"] = tools
    if body.get("tool_choice") is not None:
        chat["tool_choice"] = _tool_choice(body["tool_choice"])
    text = _text(body.get("text"))
    if text is not None:
        chat["response_format"] = text
    metadata = _metadata(body.get("metadata"))
    try:
        parsed = parse_chat_request(chat)
    except ApiError as error:
        raise translation.renamed(error) from None
    pending = tuple(
        dataclasses.replace(item, segments=tuple(_renamed(translation, s) for s in item.segments))
        for item in parsed.pending
    )
    echo = {
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "metadata": metadata,
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "temperature": body.get("temperature", 1.0),
        "top_p": body.get("top_p", 1.0),
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": [_echoed_tool(tool) for tool in body.get("tools") or []],
        "text": {"format": (body.get("text") or {}).get("format") or {"type": "text"}},
    }
    if body.get("user") is not None:  # a string in OpenAI's schema, never null
        echo["user"] = body["user"]
    return ResponsesCall(
        parsed.request,
        stream,
        pending,
        echo,
        store is not False,
        body,
        input_items(body["input"]),
        previous,
        conversation or [],
    )


def input_items(value: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """This request's input as stored items: each with a type, an id and parts."""
    if isinstance(value, str):
        value = [{"role": "user", "content": value}]
    items = []
    for item in value:
        kind = item.get("type", "message")
        stored = {"type": kind, **orjson.loads(orjson.dumps(item))}
        if kind == "message" and isinstance(item.get("content"), str):
            part = "output_text" if item.get("role") == "assistant" else "input_text"
            stored["content"] = [{"type": part, "text": item["content"]}]
        if kind == "message":
            stored.setdefault("status", "completed")
            for part in stored["content"]:
                if part.get("type") == "output_text":
                    part.setdefault("annotations", [])
                    part.setdefault("logprobs", [])
        prefix = {"message": "msg", "function_call": "fc", "function_call_output": "fco"}[kind]
        stored.setdefault("id", f"{prefix}_{secrets.token_hex(16)}")
        items.append(stored)
    return items


def _refuse_unsupported_values(body: dict[str, Any]) -> None:
    """Fields accepted only with the value that asks for nothing this gateway lacks."""
    if optional_bool(body, "background"):
        raise invalid(
            "background",
            "'background' responses are not supported by this gateway; omit it or send false.",
            "unsupported_value",
        )
    include = body.get("include")
    if include is not None and include != []:
        raise invalid(
            "include",
            "'include' is not supported by this gateway; omit it or send [].",
            "unsupported_value",
        )
    truncation = body.get("truncation")
    if truncation not in (None, "disabled"):
        raise invalid(
            "truncation",
            "'truncation' supports only 'disabled' on this gateway.",
            "unsupported_value",
        )


def _metadata(value: object) -> dict[str, str]:
    """`metadata`: up to 16 string pairs, keys ≤ 64 characters, values ≤ 512."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(v, str) and len(k) <= MAX_METADATA_KEY and len(v) <= MAX_METADATA_VALUE
        for k, v in value.items()
    ):
        raise invalid(
            "metadata",
            "'metadata' must be an object of strings: keys of at most 64 characters, "
            "values of at most 512.",
            "invalid_type",
        )
    if len(value) > MAX_METADATA_KEYS:
        raise invalid("metadata", f"'metadata' may hold at most {MAX_METADATA_KEYS} keys.")
    return value


def _tools(value: object) -> list[dict[str, Any]]:
    """Function tools in chat's shape; any other tool type is refused by name."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise invalid("tools", "'tools' must be an array of tools.", "invalid_type")
    tools = []
    for i, tool in enumerate(value):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
            raise invalid(where, f"'{where}' must be an object with a 'type'.", "invalid_type")
        if tool["type"] != "function":
            raise invalid(
                f"{where}.type",
                f"'{where}.type': tools of type '{tool['type']}' are not supported by this "
                "gateway; only 'function' tools are.",
                "unsupported_value",
            )
        _known_keys(where, tool, _TOOL_KEYS)
        function = {k: v for k, v in tool.items() if k != "type" and v is not None}
        tools.append({"type": "function", "function": function})
    return tools


def _echoed_tool(tool: dict[str, Any]) -> dict[str, Any]:
    """A function tool as a response object lists it (OpenAI's FunctionTool)."""
    return {
        "type": "function",
        "name": tool["name"],
        "description": tool.get("description"),
        "parameters": tool.get("parameters"),
        "strict": tool.get("strict"),
    }


def _tool_choice(value: object) -> object:
    if isinstance(value, str):
        return value
    if (
        isinstance(value, dict)
        and value.get("type") == "function"
        and set(value)
        <= {
            "type",
            "name",
        }
    ):
        return {"type": "function", "function": {"name": value.get("name")}}
    raise invalid(
        "tool_choice",
        "'tool_choice' must be 'none', 'auto', 'required' or "
        '{"type": "function", "name": ...} on this gateway.',
        "unsupported_value",
    )


def _text(value: object) -> dict[str, Any] | None:
    """`text.format` as chat's `response_format` (same constraint path)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise invalid("text", "'text' must be an object.", "invalid_type")
    if value.get("verbosity") is not None:
        raise invalid(
            "text.verbosity",
            "'text.verbosity' is not supported by this gateway.",
            "unsupported_parameter",
        )
    _known_keys("text", value, frozenset({"format", "verbosity"}))
    format_ = value.get("format")
    if format_ is None:
        return None
    if not isinstance(format_, dict):
        raise invalid("text.format", "'text.format' must be an object.", "invalid_type")
    _known_keys("text.format", format_, _FORMAT_KEYS)
    if format_.get("type") != "json_schema":
        return {"type": format_.get("type")}
    spec = {k: format_[k] for k in ("name", "schema", "strict", "description") if k in format_}
    return {"type": "json_schema", "json_schema": spec}


def _known_keys(where: str, value: dict[str, Any], known: frozenset[str]) -> None:
    unknown = sorted(set(value) - known)
    if unknown:
        raise invalid(
            f"{where}.{unknown[0]}",
            f"'{where}.{unknown[0]}' is not supported by this gateway.",
            "unsupported_parameter",
        )


class _Translation:
    """Builds chat messages from items, remembering which item each came from."""

    def __init__(self) -> None:
        self.sources: list[str] = []  # chat message index -> "input[3]" / "instructions"

    def messages(
        self, instructions: object, input_: object, conversation: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        if instructions is not None:
            if not isinstance(instructions, str):
                raise invalid("instructions", "'instructions' must be a string.", "invalid_type")
            self._add(messages, "instructions", {"role": "developer", "content": instructions})
        for item in conversation:  # kept by this gateway, so checked before
            self._item(messages, "previous_response_id", item)
        if input_ is None:
            raise invalid("input", "'input' is required.", "missing_required_parameter")
        if isinstance(input_, str):
            self._add(messages, "input", {"role": "user", "content": input_})
            return messages
        if not isinstance(input_, list) or not input_:
            raise invalid(
                "input", "'input' must be a string or a non-empty array of items.", "invalid_type"
            )
        for i, item in enumerate(input_):
            self._item(messages, f"input[{i}]", item)
        return messages

    def _add(self, messages: list[dict[str, Any]], source: str, message: dict[str, Any]) -> None:
        messages.append(message)
        self.sources.append(source)

    def _item(self, messages: list[dict[str, Any]], where: str, item: object) -> None:
        if not isinstance(item, dict):
            raise invalid(where, f"'{where}' must be an object.", "invalid_type")
        kind = item.get("type", "message")
        if kind not in _ITEM_KEYS:
            raise invalid(
                f"{where}.type",
                f"'{where}.type': input items of type '{kind}' are not supported by this "
                "gateway; only 'message', 'function_call' and 'function_call_output' are.",
                "unsupported_value",
            )
        _known_keys(where, item, _ITEM_KEYS[kind])
        if kind == "message":
            self._add(messages, where, self._message(where, item))
            return
        call_id = item.get("call_id")
        if not isinstance(call_id, str) or not call_id:
            raise invalid(
                f"{where}.call_id",
                f"'{where}.call_id' is required and must be a non-empty string.",
                "missing_required_parameter",
            )
        if kind == "function_call_output":
            self._add(
                messages,
                where,
                {"role": "tool", "tool_call_id": call_id, "content": _output(where, item)},
            )
            return
        for name in ("name", "arguments"):
            if not isinstance(item.get(name), str):
                raise invalid(
                    f"{where}.{name}",
                    f"'{where}.{name}' is required and must be a string.",
                    "missing_required_parameter",
                )
        call = {
            "id": call_id,
            "type": "function",
            "function": {"name": item["name"], "arguments": item["arguments"]},
        }
        last = messages[-1] if messages else None
        if last is not None and last["role"] == "assistant":  # one turn's calls, together
            last.setdefault("tool_calls", []).append(call)
            return
        self._add(messages, where, {"role": "assistant", "content": None, "tool_calls": [call]})

    def _message(self, where: str, item: dict[str, Any]) -> dict[str, Any]:
        role = item.get("role")
        if role not in ROLES:
            raise invalid(
                f"{where}.role",
                f"'{where}.role' must be one of {', '.join(sorted(ROLES))}.",
                "invalid_value",
            )
        content = item.get("content")
        if isinstance(content, list):
            content = [_part(f"{where}.content[{j}]", part) for j, part in enumerate(content)]
        return {"role": role, "content": content}

    def param(self, param: str) -> str:
        """A chat parser's `param` as the field the client sent."""
        match = _CHAT_MESSAGE.match(param)
        if match is not None:
            index = int(match.group(1))
            source = self.sources[index] if index < len(self.sources) else "input"
            rest = param[match.end() :].replace(".file.", ".").removesuffix(".file")
            # Chat's image_url part is an object ({url, detail}); a Responses
            # input_image has `image_url` (the URL) and `detail` side by side.
            rest = rest.replace(".image_url.url", ".image_url").replace(
                ".image_url.detail", ".detail"
            )
            if rest.startswith(".content") and source == "instructions":
                rest = ""
            return source + rest
        if param == "messages":
            return "input"
        if param.startswith("response_format"):
            rest = param.removeprefix("response_format").replace(".json_schema", "")
            return "text.format" + rest
        if param == "max_completion_tokens":
            return "max_output_tokens"
        return re.sub(r"^(tools\[\d+\])\.function", r"\1", param)

    def renamed(self, error: ApiError) -> ApiError:
        if error.param is None:
            return error
        param = self.param(error.param)
        error.message = error.message.replace(f"'{error.param}", f"'{param}")
        error.param = param
        return error


def _renamed(translation: _Translation, segment: Segment) -> Segment:
    """A content part's `param` as the client sent it (checked after parsing)."""
    if isinstance(segment, ImageSegment):
        url_param = translation.param(f"{segment.param}.image_url.url")
        param = translation.param(segment.param)
        return dataclasses.replace(segment, param=param, url_param=url_param)
    if isinstance(segment, FilePart):
        return dataclasses.replace(segment, param=translation.param(segment.param))
    return segment  # text; Responses has no audio parts


def _part(where: str, part: object) -> object:
    """A Responses content part as chat's; the chat parser then judges it."""
    if not isinstance(part, dict) or not isinstance(part.get("type"), str):
        raise invalid(where, f"'{where}' must be an object with a 'type'.", "invalid_type")
    kind = part["type"]
    if kind not in _PART_KEYS:
        raise invalid(
            f"{where}.type",
            f"'{where}.type': content parts of type '{kind}' are not supported by this "
            "gateway; only input_text, input_file, input_image and output_text are.",
            "unsupported_content_type",
        )
    _known_keys(where, part, _PART_KEYS[kind])
    if kind in ("input_text", "output_text"):
        return {"type": "text", "text": part.get("text")}
    if kind == "input_file":
        file = {k: part[k] for k in ("file_id", "file_data", "filename") if k in part}
        return {"type": "file", "file": file}
    if part.get("file_id") is not None:  # an uploaded image: chat's stored-file path
        return {"type": "file", "file": {"file_id": part["file_id"]}}
    image: dict[str, Any] = {"url": part.get("image_url")}
    if part.get("detail") is not None:
        image["detail"] = part["detail"]
    return {"type": "image_url", "image_url": image}


def _output(where: str, item: dict[str, Any]) -> str:
    """A function_call_output's `output`: a string, or input_text parts."""
    output = item.get("output")
    if isinstance(output, str):
        return output
    if isinstance(output, list) and all(
        isinstance(p, dict) and p.get("type") == "input_text" and isinstance(p.get("text"), str)
        for p in output
    ):
        return "\n".join(p["text"] for p in output)
    raise invalid(
        f"{where}.output",
        f"'{where}.output' must be a string or an array of input_text parts.",
        "invalid_type",
    )
