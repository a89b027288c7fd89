"""POST /v1/embeddings: authenticate, validate, embed via inference, answer."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
from aqueduct.auth.v1 import auth_pb2 as auth_pb
from aqueduct.inference.v1 import inference_pb2 as pb
from starlette.requests import Request
from starlette.responses import Response

from core.estimates import estimate_embedding_tokens
from edge.auth import Authenticator, require_model_access
from edge.embeddings_protocol import EmbeddingsCall, embeddings_json, parse_embeddings_request
from edge.errors import ApiError, from_rpc_error
from edge.http import json_response, read_json, request_id, until_disconnect
from edge.limits import Admission, Limiter, Usage
from edge.line_outcome import BeforeCall, LineOutcome, error_outcome
from edge.metrics import EdgeMetrics
from edge.pipeline import interrupted

ROUTE = "/v1/embeddings"

if TYPE_CHECKING:
    from aqueduct.inference.v1.inference_pb2_grpc import InferenceServiceAsyncStub


class EmbeddingsHandler:
    def __init__(
        self,
        authenticator: Authenticator,
        limiter: Limiter,
        inference: InferenceServiceAsyncStub,
        max_body_bytes: int,
        metrics: EdgeMetrics,
    ) -> None:
        self.authenticator = authenticator
        self.limiter = limiter
        self.inference = inference
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics

    async def __call__(self, request: Request) -> Response:
        rid = request_id(request)
        try:
            principal = await self.authenticator.authenticate(request.headers, rid)
            call, usage, admission = await self._admit(
                principal, await read_json(request, self.max_body_bytes), rid
            )
        except ApiError as error:
            self.metrics.refused(ROUTE, error.status)
            raise
        headers = {"x-request-id": rid, **admission.headers}
        call.request.request_id = rid
        try:
            # A client that leaves cancels the call, which cancels the upstream request.
            answer = await until_disconnect(request.receive, self._embed(call.request))
        except ApiError as error:
            self._finish(admission, usage, error)
            error.headers.update(headers)
            raise
        usage.model = answer.model or usage.model
        usage.input_tokens, usage.completed = answer.usage.prompt_tokens, True
        self._finish(admission, usage, None)
        return json_response(embeddings_json(answer, call.base64), headers=headers)

    async def run_line(
        self,
        principal: auth_pb.Principal,
        body: object,
        rid: str,
        batch_id: str,
        before_call: BeforeCall,
    ) -> LineOutcome:
        """One batch line through the same steps as a live request."""
        try:
            call, usage, admission = await self._admit(principal, body, rid, batch_id)
        except ApiError as error:
            self.metrics.refused(ROUTE, error.status)
            return error_outcome(error, rid, refused=True)
        try:
            await before_call()
        except BaseException:  # not sent: the reservation still settles
            usage.ended(interrupted())
            self.limiter.settle(admission, usage)
            raise
        call.request.request_id = rid
        try:
            answer = await self._embed(call.request)
        except ApiError as error:
            self._finish(admission, usage, error)
            return error_outcome(error, rid)
        except BaseException:
            self._finish(admission, usage, interrupted())
            raise
        usage.model = answer.model or usage.model
        usage.input_tokens, usage.completed = answer.usage.prompt_tokens, True
        self._finish(admission, usage, None)
        return LineOutcome(
            200, embeddings_json(answer, call.base64), rid, None, usage.input_tokens, 0
        )

    async def _admit(
        self, principal: auth_pb.Principal, body: object, rid: str, batch_id: str = ""
    ) -> tuple[EmbeddingsCall, Usage, Admission]:
        call = parse_embeddings_request(body)
        require_model_access(principal, call.request.model, call.request.fallback_models)
        # Inference holds configured fallbacks to the key's models too.
        call.request.allowed_models.extend(principal.allowed_models)
        usage = Usage(
            rid,
            call.request.model,
            False,
            call.request.user,
            input_tokens=estimate_embedding_tokens(call.request),
            batch_id=batch_id,
            route=ROUTE,
        )
        admission = await self.limiter.reserve(principal, usage.input_tokens, 0, rid)
        return call, usage, admission

    def _finish(self, admission: Admission, usage: Usage, error: ApiError | None) -> None:
        usage.ended(error)
        self.limiter.settle(admission, usage)
        self.metrics.finished(ROUTE, "embeddings", usage, admission.principal.team)

    async def _embed(self, request: pb.CreateEmbeddingsRequest) -> pb.CreateEmbeddingsResponse:
        try:
            return await self.inference.CreateEmbeddings(request)
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error, "inference") from None
