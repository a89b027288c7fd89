"""The HTTP status a service records for an error it ended a call with."""

from __future__ import annotations

import pytest

from core.errors import Kind, ServiceError
from core.status import http_status


@pytest.mark.parametrize(
    ("kind", "reason", "metadata", "status"),
    [
        (Kind.RESOURCE_EXHAUSTED, "RATE_LIMITED", {}, 429),
        (Kind.PERMISSION_DENIED, "MODEL_NOT_ALLOWED", {}, 403),
        (Kind.INVALID_ARGUMENT, "CONTEXT_LENGTH_EXCEEDED", {}, 400),
        (Kind.UNAVAILABLE, "UPSTREAM_ERROR", {}, 502),  # by reason, not by code
        (Kind.FAILED_PRECONDITION, "UPSTREAM_REJECTED", {"http_status": "413"}, 413),
        (Kind.FAILED_PRECONDITION, "UPSTREAM_REJECTED", {}, 422),  # no status: the code's
        (Kind.INTERNAL, "BUG", {}, 500),
    ],
)
def test_http_status(kind: Kind, reason: str, metadata: dict[str, str], status: int) -> None:
    assert http_status(ServiceError(kind, reason, "m", metadata=metadata)) == status
