"""ServiceError <-> gRPC status with a google.rpc.ErrorInfo detail (AIP-193), and the
one table from gRPC statuses to HTTP ones (ARCHITECTURE.md's error map)."""

from __future__ import annotations

from collections.abc import Mapping

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from core.errors import ServiceError

ERROR_DOMAIN = "aqueduct"

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


def to_grpc_status(error: ServiceError) -> grpc.Status:
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN)
    info.metadata.update(error.metadata)
    if error.param:
        info.metadata["param"] = error.param
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(
        code=code_pb2.Code.Value(error.kind.value), message=error.message, details=[detail]
    )
    return rpc_status.to_status(status)


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo detail a failed call carries, if any."""
    for key, value in error.trailing_metadata() or ():
        if key != "grpc-status-details-bin" or not isinstance(value, bytes):
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                return info
    return None


def by_reason(reason: str, details: Mapping[str, str], mapped: tuple[int, str]) -> tuple[int, str]:
    """The (HTTP status, type) for a reason that overrides its gRPC code's row."""
    if reason in REASON_TO_HTTP:
        return REASON_TO_HTTP[reason]
    upstream = details.get("http_status", "")
    if reason in UPSTREAM_STATUS_REASONS and upstream.isdigit() and 400 <= int(upstream) < 500:
        return int(upstream), HTTP_TYPES.get(int(upstream), "invalid_request_error")
    return mapped


def http_status(error: ServiceError) -> int:
    """The HTTP status the edge answers for `error` (for ledger rows written
    by a service itself): the same table and overrides as the edge's."""
    mapped = GRPC_TO_HTTP.get(grpc.StatusCode[error.kind.value], INTERNAL)
    return by_reason(error.reason, error.metadata, mapped)[0]
