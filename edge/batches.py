"""The Batch API: POST/GET /v1/batches, GET /v1/batches/{id}, POST …/cancel.

Records live in the files service (BatchesService); the lines run in the edge's
batch worker (edge/batch_worker.py). Every call is scoped to the key's team:
another team's batch answers 404, as files do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import grpc
from aqueduct.files.v1 import files_pb2 as pb
from starlette.requests import Request
from starlette.responses import Response

from core.enum_names import BATCH_STATUSES
from edge.auth import Authenticator
from edge.errors import ApiError, from_rpc_error, invalid
from edge.files import team_of
from edge.http import json_response, list_response, page_limit, read_json, request_id
from edge.path_ids import generated_id

if TYPE_CHECKING:
    from aqueduct.files.v1.files_pb2_grpc import BatchesServiceAsyncStub

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
CALL_TIMEOUT_S = 10.0
MAX_CREATE_BODY_BYTES = 64 * 1024
# OpenAI's metadata bounds: 16 pairs, keys up to 64 characters, values up to 512.
MAX_METADATA_PAIRS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512


def _when(seconds: int) -> int | None:
    return seconds or None


def batch_json(batch: pb.Batch) -> dict[str, Any]:
    """OpenAI's batch object; a moment not come yet (or no errors, no file, no
    single model) is left out, as its schema has these fields optional but not
    nullable."""
    full = {
        "id": batch.id,
        "object": "batch",
        "endpoint": batch.endpoint,
        "model": batch.model or None,
        "errors": {
            "object": "list",
            "data": [
                {
                    "code": e.code,
                    "message": e.message,
                    "param": e.param or None,
                    "line": e.line or None,
                }
                for e in batch.errors
            ],
        }
        if batch.errors
        else None,
        "input_file_id": batch.input_file_id,
        "completion_window": batch.completion_window,
        "status": BATCH_STATUSES[batch.status],
        "output_file_id": batch.output_file_id or None,
        "error_file_id": batch.error_file_id or None,
        "created_at": batch.created_at,
        "in_progress_at": _when(batch.in_progress_at),
        "expires_at": _when(batch.expires_at),
        "finalizing_at": _when(batch.finalizing_at),
        "completed_at": _when(batch.completed_at),
        "failed_at": _when(batch.failed_at),
        "expired_at": _when(batch.expired_at),
        "cancelling_at": _when(batch.cancelling_at),
        "cancelled_at": _when(batch.cancelled_at),
        "request_counts": {
            "total": batch.total,
            "completed": batch.completed,
            "failed": batch.failed,
        },
        # The succeeded lines' tokens, as their ledger rows have them. Aqueduct
        # counts neither cached nor reasoning tokens apart: 0, as in Responses.
        "usage": {
            "input_tokens": batch.usage.input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": batch.usage.output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": batch.usage.input_tokens + batch.usage.output_tokens,
        },
        "metadata": dict(batch.metadata) or None,
    }
    return {name: value for name, value in full.items() if value is not None}


def _rpc_error(error: grpc.aio.AioRpcError) -> ApiError:
    mapped = from_rpc_error(error, "files")
    if mapped.status == 404 and mapped.param == "batch_id":
        mapped.code = "batch_not_found"
    return mapped


def _string(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if value is None:
        raise invalid(name, f"'{name}' is required.", "missing_required_parameter")
    if not isinstance(value, str) or not value:
        raise invalid(name, f"'{name}' must be a non-empty string.")
    return value


def parse_create(body: object) -> tuple[str, str, str, dict[str, str]]:
    """input_file_id, endpoint, completion_window, metadata of a create body."""
    if not isinstance(body, dict):
        raise invalid(None, "The request body must be a JSON object.")
    unknown = set(body) - {"input_file_id", "endpoint", "completion_window", "metadata"}
    if unknown:
        name = sorted(unknown)[0][:64]
        raise invalid(name, f"Unknown parameter: '{name}'.", "unknown_parameter")
    input_file_id = _string(body, "input_file_id")
    endpoint = _string(body, "endpoint")
    if endpoint not in ENDPOINTS:
        raise invalid(
            "endpoint", f"'endpoint' must be one of {', '.join(ENDPOINTS)}; got '{endpoint[:64]}'."
        )
    window = _string(body, "completion_window")
    if window != "24h":
        raise invalid(
            "completion_window", f"'completion_window' must be '24h'; got '{window[:16]}'."
        )
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict) or len(metadata) > MAX_METADATA_PAIRS:
        raise invalid(
            "metadata", f"'metadata' must be an object of at most {MAX_METADATA_PAIRS} pairs."
        )
    for key, value in metadata.items():
        if (
            len(key) > MAX_METADATA_KEY
            or not isinstance(value, str)
            or len(value) > MAX_METADATA_VALUE
        ):
            raise invalid(
                "metadata",
                f"'metadata' keys are strings of at most {MAX_METADATA_KEY} characters and "
                f"values strings of at most {MAX_METADATA_VALUE}.",
            )
    return input_file_id, endpoint, window, metadata


class BatchesApi:
    def __init__(self, authenticator: Authenticator, batches: BatchesServiceAsyncStub) -> None:
        self.authenticator = authenticator
        self.batches = batches

    async def create(self, request: Request) -> Response:
        rid = request_id(request)
        principal = await self.authenticator.authenticate(request.headers, rid)
        input_file_id, endpoint, window, metadata = parse_create(
            await read_json(request, MAX_CREATE_BODY_BYTES)
        )
        if len(input_file_id) > 128:
            raise invalid("input_file_id", "'input_file_id' is no file id.")
        try:
            answer = await self.batches.CreateBatch(
                pb.CreateBatchRequest(
                    team=team_of(principal),
                    key_id=principal.key_id,
                    input_file_id=input_file_id,
                    endpoint=endpoint,
                    completion_window=window,
                    metadata=metadata,
                ),
                timeout=CALL_TIMEOUT_S,
                metadata=(("x-request-id", rid),),
            )
        except grpc.aio.AioRpcError as error:
            mapped = _rpc_error(error)
            if mapped.status == 404:  # the input file: name the body's field
                mapped.param = "input_file_id"
            raise mapped from None
        return json_response(batch_json(answer.batch), headers={"x-request-id": rid})

    async def list(self, request: Request) -> Response:
        rid = request_id(request)
        principal = await self.authenticator.authenticate(request.headers, rid)
        query = request.query_params
        listing = pb.ListBatchesRequest(team=team_of(principal), after=query.get("after", ""))
        limit = page_limit(query.get("limit"), 100)
        if limit is not None:
            listing.limit = limit
        try:
            page = await self.batches.ListBatches(
                listing, timeout=CALL_TIMEOUT_S, metadata=(("x-request-id", rid),)
            )
        except grpc.aio.AioRpcError as error:
            raise _rpc_error(error) from None
        return list_response([batch_json(b) for b in page.batches], page.has_more, rid)

    async def retrieve(self, request: Request) -> Response:
        rid = request_id(request)
        principal = await self.authenticator.authenticate(request.headers, rid)
        batch_id = generated_id(request, "batch_id", "batch", "batch_id")
        try:
            answer = await self.batches.GetBatch(
                pb.GetBatchRequest(team=team_of(principal), batch_id=batch_id),
                timeout=CALL_TIMEOUT_S,
                metadata=(("x-request-id", rid),),
            )
        except grpc.aio.AioRpcError as error:
            raise _rpc_error(error) from None
        return json_response(batch_json(answer.batch), headers={"x-request-id": rid})

    async def cancel(self, request: Request) -> Response:
        rid = request_id(request)
        principal = await self.authenticator.authenticate(request.headers, rid)
        batch_id = generated_id(request, "batch_id", "batch", "batch_id")
        try:
            answer = await self.batches.CancelBatch(
                pb.CancelBatchRequest(team=team_of(principal), batch_id=batch_id),
                timeout=CALL_TIMEOUT_S,
                metadata=(("x-request-id", rid),),
            )
        except grpc.aio.AioRpcError as error:
            raise _rpc_error(error) from None
        return json_response(batch_json(answer.batch), headers={"x-request-id": rid})
