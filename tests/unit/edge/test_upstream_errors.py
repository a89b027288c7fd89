"""Upstream failures reach the client as a gateway reports them: 502 for a broken
upstream, the upstream's own 4xx status and message, Retry-After kept."""

from __future__ import annotations

import pytest
from grpc.aio import AioRpcError, Metadata

from core.errors import Kind, ServiceError
from core.status import to_grpc_status
from edge.errors import from_rpc_error
from services.inference.openai_wire.errors import bad_response, rejection


def rpc_error(error: ServiceError) -> AioRpcError:
    status = to_grpc_status(error)
    return AioRpcError(status.code, Metadata(), Metadata(*status.trailing_metadata), status.details)


@pytest.mark.parametrize(
    ("status", "http", "type_"),
    [
        (400, 400, "invalid_request_error"),
        (401, 401, "authentication_error"),
        (404, 404, "not_found_error"),
        (409, 409, "invalid_request_error"),
        (413, 413, "invalid_request_error"),
        (422, 422, "unprocessable_entity_error"),
        (429, 429, "rate_limit_error"),
        (500, 502, "server_error"),
        (502, 502, "server_error"),
        (503, 503, "service_unavailable_error"),
        (504, 504, "timeout_error"),
    ],
)
def test_upstream_statuses(status: int, http: int, type_: str) -> None:
    body = b'{"error": {"message": "from upstream"}}'
    error = from_rpc_error(rpc_error(rejection(status, body, None, "m")), "inference")
    assert (error.status, error.type) == (http, type_)
    assert "from upstream" in error.message


def test_garbage_is_502_with_its_message() -> None:
    bad = bad_response("m", "the answer is not an OpenAI event stream")
    error = from_rpc_error(rpc_error(bad), "inference")
    assert error.status == 502 and "not an OpenAI event stream" in error.message
    assert error.code == "upstream_bad_response"


def test_retry_after_becomes_the_header() -> None:
    limited = rejection(429, b"{}", "30", "m")
    assert from_rpc_error(rpc_error(limited), "inference").headers["retry-after"] == "30"


def test_a_forged_status_is_ignored_for_other_reasons() -> None:
    other = ServiceError(Kind.NOT_FOUND, "MODEL_NOT_FOUND", "x", metadata={"http_status": "418"})
    assert from_rpc_error(rpc_error(other), "inference").status == 404
    weird = ServiceError(
        Kind.INVALID_ARGUMENT, "UPSTREAM_REJECTED", "x", metadata={"http_status": "200"}
    )
    assert from_rpc_error(rpc_error(weird), "inference").status == 400
