"""OpenAI's HTTP wire format, as an upstream speaks it: request bodies out,
stream chunks / completions / embeddings / errors in. Pure: no I/O.

Anything an upstream sends that does not fit the format is UPSTREAM_BAD_RESPONSE
(the edge answers 502) with a message that says what was wrong.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import math
import time
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from core.enum_names import FINISH_REASONS
from core.errors import Kind, ServiceError
from services.inference import tokens
from services.inference.embedding import EmbedRequest
from services.inference.generation import (
    ChatRequest,
    CompletionRequest,
    Delta,
    Finish,
    Message,
    ResponseFormat,
    Sampling,
    TokenLogprob,
    ToolCallDelta,
    TopLogprob,
)

DONE = b"[DONE]"
MAX_ERROR_MESSAGE = 2000

# Upstream 4xx -> the kind a gRPC caller sees; the edge answers the upstream's
# own status (carried in ErrorInfo metadata `http_status`).
REJECTION_KINDS: Mapping[int, Kind] = {
    400: Kind.INVALID_ARGUMENT,
    401: Kind.UNAUTHENTICATED,
    403: Kind.PERMISSION_DENIED,
    404: Kind.NOT_FOUND,
    408: Kind.DEADLINE_EXCEEDED,
    413: Kind.INVALID_ARGUMENT,
    422: Kind.FAILED_PRECONDITION,
    429: Kind.RESOURCE_EXHAUSTED,
}


def bad_response(model: str, problem: str) -> ServiceError:
    return ServiceError(
        Kind.UNAVAILABLE,
        "UPSTREAM_BAD_RESPONSE",
        f"The upstream of model '{model}' sent an invalid response: {problem}.",
    )


def chat_payload(request: ChatRequest, upstream_model: str) -> bytes:
    messages = [_message(m) for m in request.messages]
    body: dict[str, Any] = {
        "model": upstream_model,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},  # always: the ledger needs it
    }
    s = request.sampling
    _add_sampling(body, s)
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
    response_format = _response_format(s.response_format)
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
    message: dict[str, Any] = {"role": m.role, "content": m.content}
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


def _response_format(value: ResponseFormat) -> dict[str, Any] | None:
    """OpenAI's `response_format`; a grammar is ours alone, so upstreams refuse it."""
    if value.type == "text":
        return None
    if value.type == "json_object":
        return {"type": "json_object"}
    if value.type == "json_schema":
        return {
            "type": "json_schema",
            "json_schema": {
                "name": value.name,
                "schema": orjson.loads(value.schema or "{}"),
                "strict": value.strict,
            },
        }
    raise ServiceError(
        Kind.INVALID_ARGUMENT,
        "UNSUPPORTED_RESPONSE_FORMAT",
        f"'response_format' type '{value.type}' is only supported on the local model; "
        "OpenAI-compatible upstreams take text, json_object and json_schema.",
        param="response_format",
    )


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


def embeddings_payload(request: EmbedRequest, upstream_model: str) -> bytes:
    body: dict[str, Any] = {
        "model": upstream_model,
        "input": list(request.inputs),
        "encoding_format": "float",
    }
    if request.dimensions is not None:
        body["dimensions"] = request.dimensions
    if request.user:
        body["user"] = request.user
    if request.input_type:
        body["input_type"] = request.input_type
    return orjson.dumps(body)


def _load(data: bytes, model: str, what: str) -> dict[str, Any]:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise bad_response(model, f"{what} is not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise bad_response(model, f"{what} is not a JSON object")
    return value


def _usage(value: object) -> tuple[int, int] | None:
    if not isinstance(value, dict):
        return None
    prompt, completion = value.get("prompt_tokens"), value.get("completion_tokens", 0)
    if isinstance(prompt, int) and isinstance(completion, int) and min(prompt, completion) >= 0:
        return prompt, completion
    return None


def _error_text(error: object) -> str:
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])[:MAX_ERROR_MESSAGE]
    if isinstance(error, str):
        return error[:MAX_ERROR_MESSAGE]
    return "no message"


class ChatChunks:
    """Folds an upstream's `chat.completion.chunk` events into delta batches,
    then a Finish with its usage (or an estimate when it reported none)."""

    text_mode = False  # True: `text_completion` chunks (choice `text`, legacy logprobs)

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
            chunk = _load(data, self.model, "a stream event")
            if "error" in chunk:
                raise ServiceError(
                    Kind.UNAVAILABLE,
                    "UPSTREAM_ERROR",
                    f"The upstream of model '{self.model}' failed mid-stream: "
                    f"{_error_text(chunk['error'])}",
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
        answer = _load(body, self.model, "the completion")
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
            content = part.get("content") if isinstance(part, dict) else None
            if self.text_mode:
                content = choice.get("text")
            if isinstance(content, str) and content:
                texts.setdefault(index, []).append(content)
                self._text_bytes += len(content.encode())
                self._chunks += 1
            calls = _tool_calls(part.get("tool_calls") if isinstance(part, dict) else None)
            if calls:
                self._tool_calls.setdefault(index, []).extend(calls)
                self._chunks += 1
            logprobs = (
                _text_logprobs(choice.get("logprobs"))
                if self.text_mode
                else _logprobs(choice.get("logprobs"))
            )
            if logprobs:
                self._logprobs.setdefault(index, []).extend(logprobs)
            reason = choice.get("finish_reason")
            if isinstance(reason, str) and reason:
                self.finish_reasons[index] = reason if reason in FINISH_REASONS.by_name else "stop"

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


class TextChunks(ChatChunks):
    """As ChatChunks, for `/completions` answers (`text_completion` objects)."""

    text_mode = True


def completion_payload(request: CompletionRequest, upstream_model: str) -> bytes:
    """A `/completions` body. With `best_of` the upstream cannot stream (OpenAI
    refuses both), so it is asked for one JSON answer."""
    prompts = [p if isinstance(p, str) else list(p) for p in request.prompts]
    s = request.sampling
    streams = not (request.best_of is not None and request.best_of > 1)
    body: dict[str, Any] = {
        "model": upstream_model,
        "prompt": prompts[0] if len(prompts) == 1 else prompts,
        "stream": streams,
    }
    if streams:
        body["stream_options"] = {"include_usage": True}
    _add_sampling(body, s)
    if request.best_of is not None:
        body["best_of"] = request.best_of
    if s.n != 1:
        body["n"] = s.n
    if s.logprobs:
        body["logprobs"] = s.top_logprobs
    if s.logit_bias:
        body["logit_bias"] = {str(token): bias for token, bias in s.logit_bias}
    if request.echo:
        body["echo"] = True
    if request.suffix:
        body["suffix"] = request.suffix
    if request.user:
        body["user"] = request.user
    response_format = _response_format(s.response_format)
    if response_format is not None:
        body["response_format"] = response_format
    return orjson.dumps(body)


def _text_logprobs(value: object) -> tuple[TokenLogprob, ...]:
    """A `/completions` choice's legacy `logprobs` object; a null log probability
    (an echoed first token) becomes NaN, which renders as null again."""
    if not isinstance(value, dict):
        return ()
    tokens_, logprobs, tops = (
        value.get("tokens"),
        value.get("token_logprobs"),
        value.get("top_logprobs"),
    )
    if not isinstance(tokens_, list) or not isinstance(logprobs, list):
        return ()
    tops = tops if isinstance(tops, list) else []
    entries: list[TokenLogprob] = []
    for position, token in enumerate(tokens_):
        if not isinstance(token, str):
            continue
        logprob = logprobs[position] if position < len(logprobs) else None
        top = tops[position] if position < len(tops) else None
        entries.append(
            TokenLogprob(
                token,
                float(logprob) if isinstance(logprob, int | float) else math.nan,
                token.encode(),
                tuple(
                    TopLogprob(t, float(p), t.encode())
                    for t, p in (top.items() if isinstance(top, dict) else ())
                    if isinstance(p, int | float)
                ),
            )
        )
    return tuple(entries)


def parse_embeddings(body: bytes, count: int, model: str) -> tuple[NDArray[np.float32], int | None]:
    """The vectors of an embeddings answer in input order, and its prompt tokens."""
    answer = _load(body, model, "the embeddings answer")
    data = answer.get("data")
    if not isinstance(data, list) or len(data) != count:
        raise bad_response(model, f"expected {count} embeddings in 'data'")
    rows: list[Any] = [None] * count
    for position, item in enumerate(data):
        if not isinstance(item, dict):
            raise bad_response(model, "an embedding is not an object")
        index = item.get("index", position)
        if not isinstance(index, int) or not 0 <= index < count or rows[index] is not None:
            raise bad_response(model, "embedding indexes are not 0..n-1")
        vector = item.get("embedding")
        try:
            if isinstance(vector, str):
                rows[index] = np.frombuffer(base64.b64decode(vector, validate=True), "<f4")
            else:
                rows[index] = np.asarray(vector, dtype=np.float32)
        except (ValueError, TypeError, binascii.Error):
            raise bad_response(model, "an embedding is not an array of numbers") from None
    try:
        matrix = np.vstack(rows).astype(np.float32, copy=False)
    except ValueError:
        raise bad_response(model, "the embeddings differ in length") from None
    if matrix.ndim != 2 or matrix.shape[1] == 0:
        raise bad_response(model, "an embedding is empty")
    usage = answer.get("usage")
    prompt = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    return matrix, prompt if isinstance(prompt, int) and prompt >= 0 else None


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """`Retry-After` as seconds: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def rejection(status: int, body: bytes, retry_after: str | None, model: str) -> ServiceError:
    """An upstream's error answer as the error our caller gets."""
    message, param = _error_message(body)
    if status == 429:
        metadata = {"http_status": "429"}
        seconds = retry_after_seconds(retry_after)
        if seconds is not None:
            metadata["retry_after_s"] = f"{seconds:g}"
        return ServiceError(
            Kind.RESOURCE_EXHAUSTED,
            "UPSTREAM_RATE_LIMITED",
            message or f"The upstream of model '{model}' is rate limiting requests.",
            param,
            metadata,
        )
    if 400 <= status < 500:
        return ServiceError(
            REJECTION_KINDS.get(status, Kind.INVALID_ARGUMENT),
            "UPSTREAM_REJECTED",
            message or f"The upstream of model '{model}' refused the request (HTTP {status}).",
            param,
            {"http_status": str(status)},
        )
    detail = f": {message}" if message else ""
    if status == 503:
        return ServiceError(
            Kind.UNAVAILABLE,
            "UPSTREAM_UNAVAILABLE",
            f"The upstream of model '{model}' is unavailable (HTTP 503){detail}",
        )
    if status == 504:
        return ServiceError(
            Kind.DEADLINE_EXCEEDED,
            "UPSTREAM_TIMEOUT",
            f"The upstream of model '{model}' timed out (HTTP 504){detail}",
        )
    if status >= 500:
        return ServiceError(
            Kind.UNAVAILABLE,
            "UPSTREAM_ERROR",
            f"The upstream of model '{model}' failed (HTTP {status}){detail}",
        )
    return bad_response(model, f"unexpected HTTP status {status}")


def _error_message(body: bytes) -> tuple[str, str | None]:
    """OpenAI's `{"error": {"message", "param"}}`, or the start of a plain-text body."""
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = " ".join(body[:MAX_ERROR_MESSAGE].decode(errors="replace").split())
        return (text if text.isprintable() else ""), None
    if not isinstance(answer, dict):
        return "", None
    error = answer.get("error")
    if isinstance(error, str):
        return error[:MAX_ERROR_MESSAGE], None
    if isinstance(error, dict):
        param = error.get("param")
        message = _error_text(error) if isinstance(error.get("message"), str) else ""
        return message, param if isinstance(param, str) and param else None
    for key in ("message", "detail"):  # FastAPI-style and other servers
        if isinstance(answer.get(key), str):
            return answer[key][:MAX_ERROR_MESSAGE], None
    return "", None


def _add_sampling(body: dict[str, Any], s: Sampling) -> None:
    """The sampling fields both chat and text completions send, when set."""
    for name, value in (
        ("max_tokens", s.max_tokens),
        ("temperature", s.temperature),
        ("top_p", s.top_p),
        ("seed", s.seed),
        ("presence_penalty", s.presence_penalty),
        ("frequency_penalty", s.frequency_penalty),
    ):
        if value is not None:
            body[name] = value
    if s.stops:
        body["stop"] = list(s.stops)
