"""The OpenAI error shape, and the one table that maps gRPC statuses to it."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import grpc
import orjson

from core.status import GRPC_TO_HTTP, INTERNAL, by_reason, error_info

log = logging.getLogger(__name__)


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
