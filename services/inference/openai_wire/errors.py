"""Upstream answers that are errors or not OpenAI's format, as the errors our
caller gets: a bad answer is UPSTREAM_BAD_RESPONSE (the edge answers 502) with
a message that says what was wrong; a refusal keeps the upstream's status."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from typing import Any

import orjson

from core.errors import Kind, ServiceError

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


def load_object(data: bytes, model: str, what: str) -> dict[str, Any]:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise bad_response(model, f"{what} is not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise bad_response(model, f"{what} is not a JSON object")
    return value


def error_text(error: object) -> str:
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])[:MAX_ERROR_MESSAGE]
    if isinstance(error, str):
        return error[:MAX_ERROR_MESSAGE]
    return "no message"


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
        message = error_text(error) if isinstance(error.get("message"), str) else ""
        return message, param if isinstance(param, str) and param else None
    for key in ("message", "detail"):  # FastAPI-style and other servers
        if isinstance(answer.get(key), str):
            return answer[key][:MAX_ERROR_MESSAGE], None
    return "", None
