"""OpenAI's HTTP wire format, as an upstream speaks it: request bodies out,
stream chunks / completions / embeddings / errors in. Pure: no I/O.

Anything an upstream sends that does not fit the format is UPSTREAM_BAD_RESPONSE
(the edge answers 502) with a message that says what was wrong.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import time
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from services.common.errors import Kind, ServiceError
from services.inference import tokens
from services.inference.embedding import EmbedRequest
from services.inference.generation import ChatRequest, Delta, Finish

FINISH_REASONS = frozenset({"stop", "length", "content_filter"})
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
    messages = [
        {"role": m.role, "content": m.content, "name": m.name}
        if m.name
        else {"role": m.role, "content": m.content}
        for m in request.messages
    ]
    body: dict[str, Any] = {
        "model": upstream_model,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},  # always: the ledger needs it
    }
    s = request.sampling
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
    if request.user:
        body["user"] = request.user
    return orjson.dumps(body)


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

    def __init__(self, model: str) -> None:
        self.model = model
        self.done = False  # saw [DONE]
        self.events = 0
        self.finish_reasons: dict[int, str] = {}
        self.usage: tuple[int, int] | None = None
        self._text_bytes = 0
        self._chunks = 0

    def feed(self, events: Iterable[bytes]) -> list[Delta]:
        """The deltas in these events, merged per choice: one batch per read."""
        texts: dict[int, list[str]] = {}
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
            self._choices(chunk.get("choices"), "delta", texts)
            usage = _usage(chunk.get("usage"))
            if usage is not None:
                self.usage = usage
        return [Delta(index, "".join(parts)) for index, parts in texts.items()]

    def completion(self, body: bytes) -> list[Delta]:
        """A whole `chat.completion` (an upstream that ignored `stream`)."""
        answer = _load(body, self.model, "the completion")
        texts: dict[int, list[str]] = {}
        self._choices(answer.get("choices"), "message", texts)
        if not self.finish_reasons:
            raise bad_response(self.model, "the completion has no choices")
        self.usage = _usage(answer.get("usage"))
        self.done = True
        return [Delta(index, "".join(parts)) for index, parts in texts.items()]

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
            if isinstance(content, str) and content:
                texts.setdefault(index, []).append(content)
                self._text_bytes += len(content.encode())
                self._chunks += 1
            reason = choice.get("finish_reason")
            if isinstance(reason, str) and reason:
                self.finish_reasons[index] = reason if reason in FINISH_REASONS else "stop"

    def finish(self, request: ChatRequest) -> Finish:
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
            prompt = tokens.prompt_tokens(request.messages)
            completion = tokens.completion_tokens(self._text_bytes, self._chunks)
        return Finish(reasons, prompt, completion)


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
