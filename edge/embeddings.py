"""POST /v1/embeddings: authenticate, validate, embed via inference, answer."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
from aqueduct.inference.v1 import inference_pb2 as pb
from starlette.requests import Request
from starlette.responses import Response

from edge.auth import Authenticator, require_model_access
from edge.embeddings_protocol import embeddings_json, parse_embeddings_request
from edge.errors import ApiError, from_rpc_error
from edge.http import json_response, read_json, request_id, until_disconnect
from edge.limits import Admission, Limiter, Usage, estimate_embedding_tokens
from edge.metrics import EdgeMetrics

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
            call = parse_embeddings_request(await read_json(request, self.max_body_bytes))
            require_model_access(principal, call.request.model, call.request.fallback_models)
            # Inference holds configured fallbacks to the key's models too.
            call.request.allowed_models.extend(principal.allowed_models)
            usage = Usage(
                rid,
                call.request.model,
                False,
                call.request.user,
                input_tokens=estimate_embedding_tokens(call.request),
            )
            admission = await self.limiter.reserve(principal, usage.input_tokens, 0, rid)
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

    def _finish(self, admission: Admission, usage: Usage, error: ApiError | None) -> None:
        usage.ended(error)
        self.limiter.settle(admission, usage)
        self.metrics.finished(ROUTE, "embeddings", usage, admission.principal.team)

    async def _embed(self, request: pb.CreateEmbeddingsRequest) -> pb.CreateEmbeddingsResponse:
        try:
            return await self.inference.CreateEmbeddings(request)
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error, "inference") from None
