"""Stored Responses API answers: kept by the files service (its database), per
team; the edge holds none. The GET / DELETE / input_items routes, and the
fetch and put the Responses route does around a generation."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import grpc
import orjson
from aqueduct.files.v1 import files_pb2 as pb
from starlette.requests import Request
from starlette.responses import Response

from edge.auth import Authenticator
from edge.errors import ApiError, from_rpc_error, invalid
from edge.files import team_of
from edge.http import json_response, list_response, page_limit, request_id
from edge.path_ids import SAFE_ID, generated_id, not_found

if TYPE_CHECKING:
    from aqueduct.files.v1.files_pb2_grpc import FilesServiceAsyncStub

CALL_TIMEOUT_S = 10.0
MAX_PAGE = 100  # OpenAI's input_items limit: 1 to 100, default 20
DEFAULT_PAGE = 20


def _error(error: grpc.aio.AioRpcError, response_id: str, param: str) -> ApiError:
    mapped = from_rpc_error(error, "files")
    if mapped.status == 404:
        return not_found("response", response_id, param)
    return mapped


class ResponseStore:
    """The files service's kept responses, as the edge uses them."""

    def __init__(self, files: FilesServiceAsyncStub) -> None:
        self.files = files

    async def get(
        self, team: str, response_id: str, rid: str, param: str = "response_id"
    ) -> pb.StoredResponse:
        try:
            answer = await self.files.GetStoredResponse(
                pb.GetStoredResponseRequest(team=team, response_id=response_id),
                timeout=CALL_TIMEOUT_S,
                metadata=(("x-request-id", rid),),
            )
        except grpc.aio.AioRpcError as error:
            raise _error(error, response_id, param) from None
        return answer.response

    async def conversation(self, team: str, response_id: str, rid: str) -> list[dict[str, Any]]:
        """The items a request with `previous_response_id` continues."""
        if not SAFE_ID.fullmatch(response_id):
            raise not_found("response", response_id, "previous_response_id")
        kept = await self.get(team, response_id, rid, "previous_response_id")
        items: list[dict[str, Any]] = orjson.loads(kept.conversation_json)
        return items

    async def put(
        self,
        team: str,
        response: dict[str, Any],
        input_items: list[dict[str, Any]],
        conversation: list[dict[str, Any]],
        rid: str,
    ) -> None:
        kept = pb.StoredResponse(
            id=response["id"],
            team=team,
            created_at=int(response.get("created_at") or time.time()),
            response_json=orjson.dumps(response).decode(),
            input_items_json=orjson.dumps(input_items).decode(),
            conversation_json=orjson.dumps(conversation).decode(),
        )
        try:
            await self.files.PutStoredResponse(
                pb.PutStoredResponseRequest(response=kept),
                timeout=CALL_TIMEOUT_S,
                metadata=(("x-request-id", rid),),
            )
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error, "files") from None


class ResponsesApi:
    """GET /v1/responses/{id}, DELETE /v1/responses/{id}, GET …/input_items."""

    def __init__(self, authenticator: Authenticator, store: ResponseStore) -> None:
        self.authenticator = authenticator
        self.store = store

    async def _kept(self, request: Request) -> tuple[pb.StoredResponse, str]:
        rid = request_id(request)
        principal = await self.authenticator.authenticate(request.headers, rid)
        response_id = generated_id(request, "response_id", "response", "response_id")
        return await self.store.get(team_of(principal), response_id, rid), rid

    async def retrieve(self, request: Request) -> Response:
        kept, rid = await self._kept(request)
        return Response(
            kept.response_json.encode(),
            media_type="application/json",
            headers={"x-request-id": rid},
        )

    async def delete(self, request: Request) -> Response:
        rid = request_id(request)
        principal = await self.authenticator.authenticate(request.headers, rid)
        response_id = generated_id(request, "response_id", "response", "response_id")
        try:
            await self.store.files.DeleteStoredResponse(
                pb.DeleteStoredResponseRequest(team=team_of(principal), response_id=response_id),
                timeout=CALL_TIMEOUT_S,
                metadata=(("x-request-id", rid),),
            )
        except grpc.aio.AioRpcError as error:
            raise _error(error, response_id, "response_id") from None
        return json_response(
            {"id": response_id, "object": "response", "deleted": True},
            headers={"x-request-id": rid},
        )

    async def input_items(self, request: Request) -> Response:
        query = request.query_params
        limit = page_limit(query.get("limit"), MAX_PAGE) or DEFAULT_PAGE
        order = query.get("order", "desc")
        if order not in ("asc", "desc"):
            raise invalid("order", f"'order' must be 'asc' or 'desc'; got '{order[:16]}'.")
        for name in query:
            if name not in ("limit", "order", "after", "include"):
                raise invalid(name, f"'{name[:40]}' is not a parameter of this route.")
        if query.getlist("include"):
            raise invalid("include", "'include' is not supported by this gateway.")
        kept, rid = await self._kept(request)
        items: list[dict[str, Any]] = orjson.loads(kept.input_items_json)
        if order == "desc":
            items.reverse()
        after = query.get("after")
        if after:
            ids = [item.get("id") for item in items]
            if after not in ids:
                raise invalid("after", f"No input item with id '{after[:64]}' in this response.")
            items = items[ids.index(after) + 1 :]
        return list_response(items[:limit], len(items) > limit, rid)
