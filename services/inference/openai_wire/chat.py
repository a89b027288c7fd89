"""Chat completions on the wire: the request body out, the upstream's
`chat.completion.chunk` stream (or whole `chat.completion`) in."""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any

import orjson

from core.enum_names import FINISH_REASONS
from core.errors import Kind, ServiceError
from services.inference import tokens
from services.inference.generation import (
    AudioInput,
    ChatRequest,
    CompletionRequest,
    Delta,
    Finish,
    Message,
    Part,
    TokenLogprob,
    ToolCallDelta,
    TopLogprob,
)
from services.inference.openai_wire.errors import bad_response, error_text, load_object
from services.inference.openai_wire.sampling import add_sampling, response_format_json

DONE = b"[DONE]"


def chat_payload(request: ChatRequest, upstream_model: str) -> bytes:
    messages = [_message(m) for m in request.messages]
    body: dict[str, Any] = {"model": upstream_model, "messages": messages}
    if request.whole:  # one JSON answer: cheaper to parse, and it always has usage
        body["stream"] = False
    else:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}  # always: the ledger needs it
    s = request.sampling
    add_sampling(body, s)
    if request.user:
        body["user"] = request.user
    if s.n != 1:
        body["n"] = s.n
    if s.logprobs:
        body["logprobs"] = True
        if s.top_logprobs:
            body["top_logprobs"] = s.top_logprobs
    if s.logit_bias:
        body["logit_bias"] = {str(token): bias for token, bias in s.logit_bias}
    response_format = response_format_json(s.response_format)
    if response_format is not None:
        body["response_format"] = response_format
    if request.tools_json:
        body["tools"] = orjson.Fragment(request.tools_json)
    if request.tool_choice_json:
        body["tool_choice"] = orjson.Fragment(request.tool_choice_json)
    if request.parallel_tool_calls is not None:
        body["parallel_tool_calls"] = request.parallel_tool_calls
    return orjson.dumps(body)


def _message(m: Message) -> dict[str, Any]:
    content: object = [_part(p) for p in m.parts] if m.parts else m.content
    message: dict[str, Any] = {"role": m.role, "content": content}
    if m.name:
        message["name"] = m.name
    if m.tool_calls:
        message["content"] = m.content or None
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in m.tool_calls
        ]
    if m.tool_call_id:
        message["tool_call_id"] = m.tool_call_id
    return message


def _part(part: Part) -> dict[str, Any]:
    """One content part as OpenAI takes it; bytes become base64 again here."""
    if isinstance(part, str):
        return {"type": "text", "text": part}
    if isinstance(part, AudioInput):
        data = base64.b64encode(part.data).decode()
        return {"type": "input_audio", "input_audio": {"data": data, "format": part.format}}
    url = part.url or f"data:{part.media_type};base64,{base64.b64encode(part.data).decode()}"
    image: dict[str, str] = {"url": url}
    if part.detail:
        image["detail"] = part.detail
    return {"type": "image_url", "image_url": image}


def _tool_calls(value: object) -> tuple[ToolCallDelta, ...]:
    """A delta's (or message's) `tool_calls`; parts that do not fit are skipped."""
    if not isinstance(value, list):
        return ()
    calls: list[ToolCallDelta] = []
    for position, item in enumerate(value):
        if not isinstance(item, dict):
            continue
        index = item.get("index", position)
        function = item.get("function")
        function = function if isinstance(function, dict) else {}
        call_id, name, arguments = item.get("id"), function.get("name"), function.get("arguments")
        calls.append(
            ToolCallDelta(
                index if isinstance(index, int) and index >= 0 else position,
                call_id if isinstance(call_id, str) else "",
                name if isinstance(name, str) else "",
                arguments if isinstance(arguments, str) else "",
            )
        )
    return tuple(calls)


def _logprobs(value: object) -> tuple[TokenLogprob, ...]:
    """A chat choice's `logprobs.content` (entries that do not fit are skipped)."""
    content = value.get("content") if isinstance(value, dict) else None
    if not isinstance(content, list):
        return ()
    entries: list[TokenLogprob] = []
    for item in content:
        if not isinstance(item, dict):
            continue
        token, logprob = item.get("token"), item.get("logprob")
        if not isinstance(token, str) or not isinstance(logprob, int | float):
            continue
        top = item.get("top_logprobs")
        entries.append(
            TokenLogprob(
                token,
                float(logprob),
                _bytes(item.get("bytes"), token),
                tuple(
                    TopLogprob(t["token"], float(t["logprob"]), _bytes(t.get("bytes"), t["token"]))
                    for t in (top if isinstance(top, list) else [])
                    if isinstance(t, dict)
                    and isinstance(t.get("token"), str)
                    and isinstance(t.get("logprob"), int | float)
                ),
            )
        )
    return tuple(entries)


def _bytes(value: object, token: str) -> bytes:
    if isinstance(value, list) and all(isinstance(b, int) and 0 <= b < 256 for b in value):
        return bytes(value)
    return token.encode()


def _usage(value: object) -> tuple[int, int] | None:
    if not isinstance(value, dict):
        return None
    prompt, completion = value.get("prompt_tokens"), value.get("completion_tokens", 0)
    if isinstance(prompt, int) and isinstance(completion, int) and min(prompt, completion) >= 0:
        return prompt, completion
    return None


class ChatChunks:
    """Folds an upstream's `chat.completion.chunk` events into delta batches,
    then a Finish with its usage (or an estimate when it reported none)."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.done = False  # saw [DONE]
        self.events = 0
        self.finish_reasons: dict[int, str] = {}
        self.usage: tuple[int, int] | None = None
        self._text_bytes = 0
        self._chunks = 0
        self._logprobs: dict[int, list[TokenLogprob]] = {}
        self._tool_calls: dict[int, list[ToolCallDelta]] = {}

    def feed(self, events: Iterable[bytes]) -> list[Delta]:
        """The deltas in these events (one batch per read), one per event and choice:
        the client gets the upstream's chunks as the upstream cut them."""
        deltas: list[Delta] = []
        for data in events:
            self.events += 1
            if data == DONE:
                self.done = True
                break
            chunk = load_object(data, self.model, "a stream event")
            if "error" in chunk:
                raise ServiceError(
                    Kind.UNAVAILABLE,
                    "UPSTREAM_ERROR",
                    f"The upstream of model '{self.model}' failed mid-stream: "
                    f"{error_text(chunk['error'])}",
                )
            texts: dict[int, list[str]] = {}
            self._logprobs, self._tool_calls = {}, {}
            self._choices(chunk.get("choices"), "delta", texts)
            deltas += self._deltas(texts)
            usage = _usage(chunk.get("usage"))
            if usage is not None:
                self.usage = usage
        return deltas

    def _deltas(self, texts: dict[int, list[str]]) -> list[Delta]:
        indexes = list(dict.fromkeys([*texts, *self._logprobs, *self._tool_calls]))
        return [
            Delta(
                i,
                "".join(texts.get(i, [])),
                tuple(self._logprobs.get(i, [])),
                tuple(self._tool_calls.get(i, [])),
                tokens=len(texts.get(i, [])),  # one token per event, as upstreams stream
            )
            for i in indexes
        ]

    def completion(self, body: bytes) -> list[Delta]:
        """A whole `chat.completion` (an upstream that ignored `stream`)."""
        answer = load_object(body, self.model, "the completion")
        texts: dict[int, list[str]] = {}
        self._logprobs, self._tool_calls = {}, {}
        self._choices(answer.get("choices"), "message", texts)
        if not self.finish_reasons:
            raise bad_response(self.model, "the completion has no choices")
        self.usage = _usage(answer.get("usage"))
        self.done = True
        return self._deltas(texts)

    def _choices(self, choices: object, field: str, texts: dict[int, list[str]]) -> None:
        if choices is None:
            return
        if not isinstance(choices, list):
            raise bad_response(self.model, "'choices' is not an array")
        for choice in choices:
            if not isinstance(choice, dict):
                raise bad_response(self.model, "a choice is not an object")
            index = choice.get("index", 0)
            if not isinstance(index, int) or index < 0:
                raise bad_response(self.model, "a choice has no valid 'index'")
            part = choice.get(field)
            content = self._choice_text(choice, part)
            if isinstance(content, str) and content:
                texts.setdefault(index, []).append(content)
                self._text_bytes += len(content.encode())
                self._chunks += 1
            calls = _tool_calls(part.get("tool_calls") if isinstance(part, dict) else None)
            if calls:
                self._tool_calls.setdefault(index, []).extend(calls)
                self._chunks += 1
            logprobs = self._choice_logprobs(choice.get("logprobs"))
            if logprobs:
                self._logprobs.setdefault(index, []).extend(logprobs)
            reason = choice.get("finish_reason")
            if isinstance(reason, str) and reason:
                self.finish_reasons[index] = reason if reason in FINISH_REASONS.by_name else "stop"

    def _choice_text(self, choice: dict[str, Any], part: object) -> object:
        """A choice's text: its `delta` (or `message`) content."""
        return part.get("content") if isinstance(part, dict) else None

    def _choice_logprobs(self, value: object) -> tuple[TokenLogprob, ...]:
        return _logprobs(value)

    def finish(self, request: ChatRequest | CompletionRequest) -> Finish:
        """The end of a stream that closed: complete, or cut (UPSTREAM_BAD_RESPONSE)."""
        if not self.done and not self.finish_reasons:
            problem = (
                "the event stream ended before the completion finished"
                if self.events
                else "the answer is not an OpenAI event stream"
            )
            raise bad_response(self.model, problem)
        reasons = self.finish_reasons or {0: "stop"}
        if self.usage is not None:
            prompt, completion = self.usage
        else:
            if isinstance(request, ChatRequest):
                prompt = tokens.prompt_tokens(request.messages)
            else:
                prompt = sum(
                    tokens.text_tokens(p) if isinstance(p, str) else len(p) for p in request.prompts
                )
            completion = tokens.completion_tokens(self._text_bytes, self._chunks)
        return Finish(reasons, prompt, completion)
