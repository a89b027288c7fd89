"""The Starlette application: routes, shared gRPC channels, error handlers."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from wsgiref.simple_server import WSGIServer

import grpc
from aqueduct.auth.v1 import auth_pb2_grpc
from aqueduct.files.v1 import files_pb2_grpc
from aqueduct.inference.v1 import inference_pb2 as pb
from aqueduct.inference.v1 import inference_pb2_grpc
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest, start_http_server
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.types import Receive, Scope, Send

from edge.admin import AdminApi
from edge.auth import Authenticator
from edge.batch_worker import BatchWorker
from edge.batches import BatchesApi
from edge.chat import ChatRoute
from edge.completions import CompletionsRoute
from edge.config import Settings
from edge.console import ConsoleFiles
from edge.console_api import ConsoleApi
from edge.embeddings import EmbeddingsHandler
from edge.errors import ApiError, from_rpc_error
from edge.file_parts import FilePartResolver
from edge.files import FilesApi
from edge.grpc_clients import open_channel
from edge.http import EventStream, error_response, json_response, request_id
from edge.limits import Limiter
from edge.live_traffic import LiveTraffic
from edge.metrics import EdgeMetrics
from edge.path_ids import named_id
from edge.pipeline import GenerationHandler
from edge.prepared_calls import GenerationCalls, prepared_method, whole_method
from edge.readiness import Readiness
from edge.replica_models import ReplicaModels
from edge.response_store import ResponsesApi, ResponseStore
from edge.responses import ResponsesRoute

log = logging.getLogger(__name__)
Handler = Callable[[Request], Awaitable[Response | EventStream]]


class Gateway:
    """Everything the routes share, built once: channels, stubs, caches."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.channels = {
            "auth": open_channel(settings.auth_addresses, settings.tls),
            "files": open_channel(settings.files_addresses, settings.tls),
            "inference": open_channel(settings.inference_addresses, settings.tls),
        }
        self.inference = inference_pb2_grpc.InferenceServiceStub(self.channels["inference"])
        self.metrics = EdgeMetrics()
        self._metrics_server: WSGIServer | None = None
        self.chat_calls = GenerationCalls(
            prepared_method(
                self.channels["inference"],
                "PreparedChatCompletion",
                pb.StreamChatCompletionResponse,
            ),
            self.inference.StreamChatCompletion,
            whole_method(self.channels["inference"], "ChatCompletion", pb.ChatCompletionResponse),
        )
        self.completion_calls = GenerationCalls(
            prepared_method(
                self.channels["inference"],
                "PreparedCompletion",
                pb.StreamCompletionResponse,
            ),
            self.inference.StreamCompletion,
            whole_method(self.channels["inference"], "Completion", pb.CompletionResponse),
        )
        auth = auth_pb2_grpc.AuthServiceStub(self.channels["auth"])
        self.authenticator = Authenticator(auth, settings.key_cache_ttl_s)
        self.limiter = Limiter(auth, settings.reserve_output_tokens, settings.limit_leases)
        admin = auth_pb2_grpc.AdminServiceStub(self.channels["auth"])
        self.admin = AdminApi(self.authenticator, admin)
        # The console's upstream health, from each inference replica (edge/replica_models.py).
        self.replica_channels = (
            [open_channel([a], settings.tls) for a in settings.inference_addresses]
            if len(settings.inference_addresses) > 1
            else []
        )
        replicas = [inference_pb2_grpc.InferenceServiceStub(c) for c in self.replica_channels]
        self.console = ConsoleApi(
            self.authenticator, admin, ReplicaModels(replicas or [self.inference])
        )
        files = files_pb2_grpc.FilesServiceStub(self.channels["files"])
        self.files = FilesApi(self.authenticator, files)
        self.chat = GenerationHandler(
            ChatRoute(),
            self.authenticator,
            self.limiter,
            self.chat_calls,
            settings.max_body_bytes,
            file_parts=FilePartResolver(
                files, settings.max_file_part_bytes, settings.max_file_parts_total_bytes
            ),
            metrics=self.metrics,
        )
        self.completions = GenerationHandler(
            CompletionsRoute(),
            self.authenticator,
            self.limiter,
            self.completion_calls,
            settings.max_body_bytes,
            metrics=self.metrics,
        )
        stored_responses = ResponseStore(files)
        self.stored_responses = ResponsesApi(self.authenticator, stored_responses)
        self.responses = GenerationHandler(
            ResponsesRoute(stored_responses),
            self.authenticator,
            self.limiter,
            self.chat_calls,
            settings.max_body_bytes,
            file_parts=self.chat.file_parts,
            metrics=self.metrics,
        )
        self.embeddings = EmbeddingsHandler(
            self.authenticator, self.limiter, self.inference, settings.max_body_bytes, self.metrics
        )
        self.live = LiveTraffic(settings.batch.live_threshold)
        batches = files_pb2_grpc.BatchesServiceStub(self.channels["files"])
        self.batches = BatchesApi(self.authenticator, batches)
        self.batch_worker = BatchWorker(
            settings.batch,
            batches,
            files,
            auth,
            {
                "/v1/chat/completions": self.chat.run_line,
                "/v1/completions": self.completions.run_line,
                "/v1/embeddings": self.embeddings.run_line,
            },
            self.live,
        )
        self.readiness = Readiness(self.channels)
        self.metrics.watch(self.authenticator, self.limiter, self.readiness)

    def start(self) -> None:
        if self.settings.metrics_port:
            self._metrics_server, _ = start_http_server(
                self.settings.metrics_port, self.settings.metrics_host, self.metrics.registry
            )
        self.authenticator.start()
        self.readiness.start()
        self.chat_calls.replenish()  # so that the first request finds one too
        self.completion_calls.replenish()
        self.batch_worker.start()

    async def close(self) -> None:
        await self.batch_worker.close()  # its running lines end and settle first
        await self.limiter.drain()  # every settle (and ledger row) reaches auth
        await self.authenticator.close()
        await self.readiness.close()
        self.chat_calls.close()
        self.completion_calls.close()
        for channel in [*self.channels.values(), *self.replica_channels]:
            await channel.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()

    def scrape(self, request: Request) -> Response:
        if self.settings.metrics_port:  # served on its own port only
            raise ApiError(404, "Not found: /metrics is on the metrics port.", code="not_found")
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def models(self, request: Request) -> Response:
        principal = await self.authenticator.authenticate(request.headers, request_id(request))
        try:
            listed = await self.inference.ListModels(
                pb.ListModelsRequest(),
                timeout=5.0,
                metadata=(("x-request-id", request_id(request)),),
            )
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error, "inference") from None
        allowed = set(principal.allowed_models)
        data = [_model_json(m) for m in listed.models if not allowed or m.id in allowed]
        return json_response(
            {"object": "list", "data": data}, headers={"x-request-id": request_id(request)}
        )

    async def model(self, request: Request) -> Response:
        """GET /v1/models/{id}: one model (an alias answers for its model); 404 in
        OpenAI's shape for an id that is unknown or that the key may not use."""
        principal = await self.authenticator.authenticate(request.headers, request_id(request))
        model_id = named_id(request, "model_id", "model", "model")
        allowed = set(principal.allowed_models)
        try:
            if allowed and model_id not in allowed:
                raise ApiError(
                    404,
                    f"The model '{model_id}' does not exist or is not served here.",
                    type="not_found_error",
                    param="model",
                    code="model_not_found",
                )
            found = await self.inference.GetModel(
                pb.GetModelRequest(id=model_id),
                timeout=5.0,
                metadata=(("x-request-id", request_id(request)),),
            )
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error, "inference") from None
        return json_response(
            _model_json(found.model), headers={"x-request-id": request_id(request)}
        )

    async def healthz(self, _request: Request) -> Response:
        return json_response({"status": "ok"})

    async def readyz(self, _request: Request) -> Response:
        status, body = await self.readiness.report()
        return json_response(body, status=status)


def _model_json(m: pb.Model) -> dict[str, object]:
    # `root`: the configured model an alias resolves to (vLLM's field).
    # `capabilities`: what it takes besides text ("vision", "audio"); [] text only.
    return {
        "id": m.id,
        "object": "model",
        "created": m.created,
        "owned_by": m.owned_by,
        "root": m.root or m.id,
        "capabilities": list(m.capabilities),
    }


async def _api_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, ApiError)
    return error_response(error, request)


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    if error.status_code == 404:
        api = ApiError(
            404,
            f"Unknown route: {request.method} {request.url.path}.",
            type="not_found_error",
            code="unknown_route",
        )
    elif error.status_code == 405:
        api = ApiError(
            405,
            f"Method {request.method} is not allowed on {request.url.path}.",
            code="method_not_allowed",
        )
    else:
        api = ApiError(error.status_code, str(error.detail))
    return error_response(api, request)


async def _internal_error(request: Request, error: Exception) -> Response:
    log.exception("unhandled error", extra={"request_id": request_id(request)}, exc_info=error)
    return error_response(
        ApiError(
            500,
            "The server had an error processing your request.",
            type="server_error",
            code="internal_error",
        ),
        request,
    )


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


async def _chat(request: Request) -> Response:
    return await _gateway(request).chat(request)  # type: ignore[return-value]


async def _completions(request: Request) -> Response:
    return await _gateway(request).completions(request)  # type: ignore[return-value]


async def _responses(request: Request) -> Response:
    return await _gateway(request).responses(request)  # type: ignore[return-value]


async def _models(request: Request) -> Response:
    return await _gateway(request).models(request)


async def _model(request: Request) -> Response:
    return await _gateway(request).model(request)


async def _embeddings(request: Request) -> Response:
    gateway = _gateway(request)
    gateway.live.enter()
    try:
        return await gateway.embeddings(request)
    finally:
        gateway.live.leave()


async def _openapi(_request: Request) -> Response:
    # Imported at the first request for it, not at start: the document is 0.3 MiB
    # of every idle edge, and nothing on a request's path waits for it.
    from edge.openapi import DOCUMENT

    return json_response(DOCUMENT)


async def _metrics(request: Request) -> Response:
    return _gateway(request).scrape(request)


async def _healthz(request: Request) -> Response:
    return await _gateway(request).healthz(request)


async def _readyz(request: Request) -> Response:
    return await _gateway(request).readyz(request)


def _admin_routes() -> list[Route]:
    def call(name: str) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            handler: Callable[[Request], Awaitable[Response]] = getattr(
                _gateway(request).admin, name
            )
            return await handler(request)

        return endpoint

    return [
        Route("/v1/admin/keys", call("create_key"), methods=["POST"]),
        Route("/v1/admin/keys", call("list_keys"), methods=["GET"]),
        Route("/v1/admin/keys/{id}", call("get_key"), methods=["GET"]),
        Route("/v1/admin/keys/{id}", call("update_key"), methods=["PATCH"]),
        Route("/v1/admin/keys/{id}", call("revoke_key"), methods=["DELETE"]),
        Route("/v1/admin/teams/{team}", call("set_team"), methods=["PUT"]),
        Route("/v1/admin/teams/{team}", call("get_team"), methods=["GET"]),
        Route("/v1/admin/usage", call("usage"), methods=["GET"]),
    ]


def _console_routes() -> list[Route | Mount]:
    def call(name: str) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            handler: Callable[[Request], Awaitable[Response]] = getattr(
                _gateway(request).console, name
            )
            return await handler(request)

        return endpoint

    async def to_console(_request: Request) -> Response:
        return RedirectResponse("/ui/", status_code=308)

    return [
        Route("/v1/console/session", call("session"), methods=["GET"]),
        Route("/v1/console/keys", call("keys"), methods=["GET"]),
        Route("/v1/console/models", call("models"), methods=["GET"]),
        Route("/v1/console/usage", call("usage"), methods=["GET"]),
        Route("/ui", to_console, methods=["GET", "HEAD"]),
        Mount("/ui", app=ConsoleFiles()),
    ]


def _batches_routes(prefix: str) -> list[Route]:
    def call(name: str) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            handler: Callable[[Request], Awaitable[Response]] = getattr(
                _gateway(request).batches, name
            )
            return await handler(request)

        return endpoint

    return [
        Route(f"{prefix}/batches", call("create"), methods=["POST"]),
        Route(f"{prefix}/batches", call("list"), methods=["GET"]),
        Route(f"{prefix}/batches/{{batch_id}}", call("retrieve"), methods=["GET"]),
        Route(f"{prefix}/batches/{{batch_id}}/cancel", call("cancel"), methods=["POST"]),
    ]


def _files_routes(prefix: str) -> list[Route]:
    def call(name: str) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            handler: Callable[[Request], Awaitable[Response]] = getattr(
                _gateway(request).files, name
            )
            return await handler(request)

        return endpoint

    return [
        Route(f"{prefix}/files", call("create"), methods=["POST"]),
        Route(f"{prefix}/files", call("list"), methods=["GET"]),
        Route(f"{prefix}/files/{{file_id}}", call("retrieve"), methods=["GET"]),
        Route(f"{prefix}/files/{{file_id}}", call("delete"), methods=["DELETE"]),
        Route(f"{prefix}/files/{{file_id}}/content", call("content"), methods=["GET"]),
    ]


def _stored_responses_routes(prefix: str) -> list[Route]:
    def call(name: str) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            handler: Callable[[Request], Awaitable[Response]] = getattr(
                _gateway(request).stored_responses, name
            )
            return await handler(request)

        return endpoint

    path = f"{prefix}/responses/{{response_id}}"
    return [
        Route(path, call("retrieve"), methods=["GET"]),
        Route(path, call("delete"), methods=["DELETE"]),
        Route(f"{path}/input_items", call("input_items"), methods=["GET"]),
    ]


class HotRoutes:
    """The generation routes, straight to their handlers; everything else to Starlette.

    POST /v1/chat/completions, /v1/completions and /v1/responses (and bare) are nearly every
    request a gateway serves, and Starlette's middleware stack and route
    matching cost about 100 µs of CPU each time on this machine; here the
    lookup is one dict. Errors get the same OpenAI shape as on any route.
    """

    def __init__(self, app: Starlette) -> None:
        self.app = app
        self.routes: dict[str, Callable[[Gateway], Handler]] = {}
        for prefix in ("/v1", ""):
            self.routes[f"{prefix}/chat/completions"] = lambda gateway: gateway.chat
            self.routes[f"{prefix}/completions"] = lambda gateway: gateway.completions
            self.routes[f"{prefix}/responses"] = lambda gateway: gateway.responses

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get(scope["path"]) if scope["type"] == "http" else None
        if route is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive, send)
        gateway: Gateway = self.app.state.gateway
        gateway.live.enter()  # batch lines wait while live traffic is high
        try:
            try:
                response = await route(gateway)(request)
            except ApiError as error:
                response = error_response(error, request)
            except Exception as error:
                response = await _internal_error(request, error)
            await response(scope, receive, send)
        finally:
            gateway.live.leave()


def create_app(settings: Settings) -> HotRoutes:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.gateway = gateway = Gateway(settings)  # channels bind to the running loop
        gateway.start()
        try:
            yield
        finally:
            await gateway.close()

    routes = [
        Route("/healthz", _healthz),
        Route("/metrics", _metrics, methods=["GET"]),
        Route("/readyz", _readyz),
        Route("/openapi.json", _openapi),
        *_admin_routes(),
        *_console_routes(),
    ]
    for prefix in ("/v1", ""):
        routes += [
            # POST goes through HotRoutes; listed here so other methods get a 405.
            Route(f"{prefix}/chat/completions", _chat, methods=["POST"]),
            Route(f"{prefix}/completions", _completions, methods=["POST"]),
            Route(f"{prefix}/responses", _responses, methods=["POST"]),
            Route(f"{prefix}/models", _models, methods=["GET"]),
            Route(f"{prefix}/models/{{model_id:path}}", _model, methods=["GET"]),
            Route(f"{prefix}/embeddings", _embeddings, methods=["POST"]),
        ]
        routes += _files_routes(prefix)
        routes += _batches_routes(prefix)
        routes += _stored_responses_routes(prefix)
    return HotRoutes(
        Starlette(
            routes=routes,
            lifespan=lifespan,
            exception_handlers={
                ApiError: _api_error,
                HTTPException: _http_error,
                Exception: _internal_error,
            },
        )
    )
