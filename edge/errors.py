"""The OpenAI error shape, and the one table that maps gRPC statuses to it."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import grpc
import orjson

from core.status import error_info

log = logging.getLogger(__name__)

# gRPC status -> (HTTP status, OpenAI error type). ARCHITECTURE.md's map.
GRPC_TO_HTTP: Mapping[grpc.StatusCode, tuple[int, str]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    grpc.StatusCode.OUT_OF_RANGE: (400, "invalid_request_error"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error"),
    grpc.StatusCode.NOT_FOUND: (404, "not_found_error"),
    grpc.StatusCode.FAILED_PRECONDITION: (422, "unprocessable_entity_error"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable_error"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout_error"),
}
INTERNAL = (500, "server_error")
# Reasons answered with another HTTP status than their gRPC code's row: an
# upstream that failed or sent garbage is 502 Bad Gateway (gRPC has no such code).
REASON_TO_HTTP: Mapping[str, tuple[int, str]] = {
    "UPSTREAM_ERROR": (502, "server_error"),
    "UPSTREAM_BAD_RESPONSE": (502, "server_error"),
}
# Reasons answered with the upstream's own 4xx status (ErrorInfo metadata `http_status`).
UPSTREAM_STATUS_REASONS = frozenset({"UPSTREAM_REJECTED", "UPSTREAM_RATE_LIMITED"})
HTTP_TYPES: Mapping[int, str] = {status: type_ for status, type_ in GRPC_TO_HTTP.values()}


class ApiError(Exception):
    """An error answered to the client as `{"error": {...}}` with an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def copy(self) -> ApiError:
        """The same answer as a new exception, for raising a kept (cached) verdict."""
        return ApiError(
            self.status,
            self.message,
            type=self.type,
            param=self.param,
            code=self.code,
            headers=self.headers,
        )

    def body(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def json(self) -> bytes:
        return orjson.dumps(self.body())


def invalid(param: str | None, message: str, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


def from_rpc_error(error: grpc.aio.AioRpcError, service: str) -> ApiError:
    """Map a failed gRPC call once, by table; internal details stay in the log."""
    code = error.code()
    info = error_info(error)
    if code == grpc.StatusCode.CANCELLED or (code == grpc.StatusCode.UNAVAILABLE and info is None):
        # Transport failure rather than a service's own verdict; or a call the
        # service cancelled, as grpc does to calls that meet its stop (a call
        # the edge cancels raises CancelledError, not this).
        log.warning("%s unreachable: %s %s", service, code.name, error.details())
        return ApiError(
            503,
            f"The {service} service is unavailable; try again shortly.",
            type=GRPC_TO_HTTP[grpc.StatusCode.UNAVAILABLE][1],
            code="service_unavailable",
        )
    mapped = GRPC_TO_HTTP.get(code)
    if mapped is None:
        log.error("internal error from %s: %s %s", service, code.name, error.details())
        return ApiError(
            500,
            "The server had an error processing your request.",
            type=INTERNAL[1],
            code="internal_error",
        )
    status, type_ = by_reason(info.reason, info.metadata, mapped) if info else mapped
    return ApiError(
        status,
        error.details() or type_,
        type=type_,
        param=info.metadata.get("param") if info else None,
        code=info.reason.lower() if info else None,
        headers=rate_limit_headers(info.metadata) if info else None,
    )


def by_reason(reason: str, details: Mapping[str, str], mapped: tuple[int, str]) -> tuple[int, str]:
    """The (HTTP status, type) for a reason that overrides its gRPC code's row."""
    if reason in REASON_TO_HTTP:
        return REASON_TO_HTTP[reason]
    upstream = details.get("http_status", "")
    if reason in UPSTREAM_STATUS_REASONS and upstream.isdigit() and 400 <= int(upstream) < 500:
        return int(upstream), HTTP_TYPES.get(int(upstream), "invalid_request_error")
    return mapped


# OpenAI sends all six `x-ratelimit-*` headers on every answer; a dimension
# without a limit says so with the largest int32 and nothing to wait for.
NO_LIMIT = str(2**31 - 1)
UNLIMITED_RATE_HEADERS = {
    f"x-ratelimit-{what}-{kind}": value
    for kind in ("requests", "tokens")
    for what, value in (("limit", NO_LIMIT), ("remaining", NO_LIMIT), ("reset", "0s"))
}


def rate_limit_headers(details: Mapping[str, str]) -> dict[str, str]:
    """`Retry-After` and OpenAI's `x-ratelimit-*` headers from ErrorInfo metadata."""
    headers = {}
    if "retry_after_s" in details:
        headers["retry-after"] = str(max(1, math.ceil(float(details["retry_after_s"]))))
    limited = {}
    for kind in ("requests", "tokens"):
        if f"limit_{kind}" in details:
            limited[f"x-ratelimit-limit-{kind}"] = details[f"limit_{kind}"]
            limited[f"x-ratelimit-remaining-{kind}"] = details[f"remaining_{kind}"]
            limited[f"x-ratelimit-reset-{kind}"] = duration(float(details[f"reset_{kind}_s"]))
    if limited:
        headers.update(UNLIMITED_RATE_HEADERS, **limited)
    return headers


def duration(seconds: float) -> str:
    """OpenAI's reset format: `20ms`, `1.5s`, `6m0s`; rounded once, at the unit it
    is shown in, so 0.9996 s is `1s` and 119.7 s is `2m0s`."""
    ms = max(0, round(seconds * 1000))
    if ms < 1000:
        return f"{ms}ms"
    tenths = round(ms / 100)
    if tenths < 600:
        return f"{tenths / 10:g}s"
    minutes, rest = divmod(round(ms / 1000), 60)
    return f"{minutes}m{rest}s"
