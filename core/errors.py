"""Domain errors shared by every service, free of any transport.

A service's domain code raises `ServiceError`; the shared server interceptor
(services/common/interceptors.py) turns it into a gRPC status with a
`google.rpc.ErrorInfo` detail, and the edge turns that into the OpenAI error
shape. `Kind` names are gRPC status code names on purpose.
"""

from __future__ import annotations

import enum


class Kind(enum.Enum):
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    NOT_FOUND = "NOT_FOUND"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    UNAVAILABLE = "UNAVAILABLE"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    INTERNAL = "INTERNAL"


class ServiceError(Exception):
    """A failure the caller should see: what kind, a stable reason, a message."""

    def __init__(
        self,
        kind: Kind,
        reason: str,
        message: str,
        param: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.reason = reason  # UPPER_SNAKE_CASE, stable across versions
        self.message = message
        self.param = param
        self.metadata = metadata or {}  # machine-readable details (ErrorInfo metadata)
