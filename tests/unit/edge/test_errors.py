"""gRPC statuses become OpenAI errors through one table."""

from __future__ import annotations

import grpc
import pytest
from grpc.aio import AioRpcError, Metadata

from core.errors import Kind, ServiceError
from core.status import to_grpc_status
from edge.errors import from_rpc_error
from services.common.drain import shutting_down


def rpc_error(kind: Kind, reason: str, message: str, param: str | None = None) -> AioRpcError:
    status = to_grpc_status(ServiceError(kind, reason, message, param))
    return AioRpcError(status.code, Metadata(), Metadata(*status.trailing_metadata), status.details)


@pytest.mark.parametrize(
    ("kind", "http"),
    [
        (Kind.INVALID_ARGUMENT, 400),
        (Kind.UNAUTHENTICATED, 401),
        (Kind.PERMISSION_DENIED, 403),
        (Kind.NOT_FOUND, 404),
        (Kind.FAILED_PRECONDITION, 422),
        (Kind.RESOURCE_EXHAUSTED, 429),
        (Kind.UNAVAILABLE, 503),
        (Kind.DEADLINE_EXCEEDED, 504),
    ],
)
def test_status_map(kind: Kind, http: int) -> None:
    error = from_rpc_error(rpc_error(kind, "SOME_REASON", "it broke", "field"), "svc")
    assert error.status == http
    assert error.message == "it broke"
    assert error.param == "field"
    assert error.code == "some_reason"


def test_internal_hides_details() -> None:
    error = from_rpc_error(rpc_error(Kind.INTERNAL, "BUG", "secret stack trace"), "svc")
    assert error.status == 500
    assert "secret" not in error.message


def test_unavailable_without_detail_is_a_transport_failure() -> None:
    bare = AioRpcError(grpc.StatusCode.UNAVAILABLE, Metadata(), Metadata(), "connection refused")
    error = from_rpc_error(bare, "auth")
    assert error.status == 503
    assert "auth" in error.message and "refused" not in error.message


def test_a_call_the_service_cancelled_is_503_not_a_client_cancel() -> None:
    """grpc cancels the calls that meet a server's stop; the client did not leave."""
    cancelled = AioRpcError(grpc.StatusCode.CANCELLED, Metadata(), Metadata(), "CANCELLED")
    error = from_rpc_error(cancelled, "auth")
    assert (error.status, error.code) == (503, "service_unavailable")


def test_a_draining_service_refusal_is_503_with_retry_after() -> None:
    status = to_grpc_status(shutting_down())
    refused = AioRpcError(
        status.code, Metadata(), Metadata(*status.trailing_metadata), status.details
    )
    error = from_rpc_error(refused, "auth")
    assert (error.status, error.code) == (503, "shutting_down")
    assert error.headers == {"retry-after": "1"}
