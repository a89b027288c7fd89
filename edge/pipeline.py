"""The one path every generation route takes.

parse → model access → file parts → reserve → call → stream or collect → settle.
A route (edge/chat.py, edge/completions.py) supplies only its parser, its
renderers and its token estimate; everything else, and the rule that every
admitted request settles exactly once however it ends, lives here.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import grpc
from aqueduct.inference.v1 import inference_pb2 as pb
from opentelemetry.trace import Span, SpanKind
from starlette.requests import Request
from starlette.responses import Response

from core import tracing
from edge.auth import Authenticator, require_model_access
from edge.chat_request import PendingContent
from edge.errors import ApiError, from_rpc_error
from edge.file_parts import FilePartResolver
from edge.files import team_of
from edge.http import EventStream, json_response, read_json, request_id, until_disconnect
from edge.limits import Admission, Limiter, Usage
from edge.metrics import EdgeMetrics
from edge.prepared_calls import GenerationCall, GenerationCalls
from edge.rendering import ChoiceText, Completion, error_event, gather

GenerationRequest = pb.StreamChatCompletionRequest | pb.StreamCompletionRequest
Message = pb.StreamChatCompletionResponse | pb.StreamCompletionResponse
Call = GenerationCall[Any, Any]


def interrupted() -> ApiError:
    return ApiError(500, "The request was interrupted.", type="server_error", code="interrupted")


class Writer(Protocol):
    """Renders a generation's stream messages as SSE events."""

    meta: Completion

    def start(self) -> bytes: ...

    def deltas(self, batch: pb.DeltaBatch) -> bytes: ...

    def finish(self, summary: pb.Summary) -> bytes: ...


class Parsed(Protocol):
    """A validated request: what to send to inference, and how to answer."""

    @property
    def request(self) -> GenerationRequest: ...

    @property
    def stream(self) -> bool: ...

    @property
    def pending(self) -> tuple[PendingContent, ...]:
        """Messages whose file parts are still to be read as text."""
        ...


@dataclass(frozen=True)
class Estimate:
    """What the reservation holds before the answer's real usage is known."""

    input_tokens: int
    max_output_tokens: int | None  # None: the limiter's default


P = TypeVar("P", bound=Parsed)


class Route(Protocol[P]):
    """What makes one generation route different from another."""

    id_prefix: str  # "chatcmpl-", "cmpl-"
    name: str  # its path, for metrics: "/v1/chat/completions"
    operation: str  # OpenTelemetry GenAI's operation name: "chat", "text_completion"

    def parse(self, body: object) -> P: ...

    def estimate(self, parsed: P) -> Estimate: ...

    def writer(self, parsed: P, meta: Completion) -> Writer: ...

    def body(
        self, parsed: P, meta: Completion, choices: dict[int, ChoiceText], summary: pb.Summary
    ) -> bytes: ...


class GenerationHandler(Generic[P]):
    def __init__(
        self,
        route: Route[P],
        authenticator: Authenticator,
        limiter: Limiter,
        calls: GenerationCalls[Any, Any],
        max_body_bytes: int,
        file_parts: FilePartResolver | None = None,
        metrics: EdgeMetrics | None = None,
    ) -> None:
        self.route = route
        self.authenticator = authenticator
        self.limiter = limiter
        self.calls = calls
        self.max_body_bytes = max_body_bytes
        self.file_parts = file_parts
        self.metrics = metrics or EdgeMetrics()

    async def __call__(self, request: Request) -> Response | EventStream:
        rid = request_id(request)
        # The request's span (None when tracing is off) ends when the request does.
        root = tracing.start(
            f"POST {self.route.name}",
            request.headers.get(tracing.TRACEPARENT),
            SpanKind.SERVER,
            {"http.route": self.route.name, "aqueduct.request_id": rid},
        )
        with tracing.current(root):
            try:
                parsed, admission, usage = await self._admit(request, rid)
            except ApiError as error:
                self.metrics.refused(self.route.name, error.status)
                tracing.end(root, error.message, **{"http.response.status_code": error.status})
                raise
            except BaseException:
                tracing.end(root, "interrupted")
                raise
            return await self._answer(request, rid, parsed, admission, usage, root)

    async def _answer(
        self,
        request: Request,
        rid: str,
        parsed: P,
        admission: Admission,
        usage: Usage,
        root: Span | None,
    ) -> Response | EventStream:
        """The admitted request: call inference, answer, and finish exactly once."""
        headers = {"x-request-id": rid, **admission.headers}
        message = parsed.request
        meta = Completion(
            self.route.id_prefix + secrets.token_urlsafe(18), int(time.time()), message.model
        )
        # The id (and trace context) ride in the message: call metadata costs
        # ~100 us a call in grpc.aio, and a prepared call's was sent before.
        message.request_id = rid
        message.traceparent = tracing.traceparent(root)
        call = await self.calls.start(message)

        def finish(error: ApiError | None) -> None:
            self._finish(admission, usage, error, call)
            if root is not None:
                end_request_span(root, message.model, usage)

        try:
            if parsed.stream:
                writer = self.route.writer(parsed, meta)
                # Wait for the first message before answering 200, so errors that
                # come before any text (unknown model, overload) keep their status.
                first = render(writer, await read_message(call, usage))  # names the served model
                return EventStream(
                    writer.start() + first,
                    sse_events(call, writer, usage),
                    headers,
                    on_close=lambda: finish(None),
                )
            choices, summary = await until_disconnect(request.receive, collect(call, meta, usage))
            body = self.route.body(parsed, meta, choices, summary)
        except ApiError as error:
            finish(error)
            error.headers.update(headers)
            raise
        except BaseException:  # cancelled, or a bug: the call and the quota still end
            finish(interrupted())
            raise
        finish(None)
        return json_response(body, headers=headers)

    async def _admit(self, request: Request, rid: str) -> tuple[P, Admission, Usage]:
        """Everything before the call: who asks, for what, within which limits."""
        with tracing.span("aqueduct.authenticate"):
            principal = await self.authenticator.authenticate(request.headers, rid)
        parsed = self.route.parse(await read_json(request, self.max_body_bytes))
        message = parsed.request
        require_model_access(principal, message.model, message.fallback_models)
        # Inference holds configured fallbacks to the key's models too.
        message.allowed_models.extend(principal.allowed_models)
        if parsed.pending and self.file_parts is not None:
            with tracing.span("aqueduct.resolve_files", parts=len(parsed.pending)):
                await self.file_parts.resolve(
                    parsed.pending, message.model, team_of(principal), rid
                )
        estimate = self.route.estimate(parsed)
        usage = Usage(
            rid, message.model, parsed.stream, message.user, input_tokens=estimate.input_tokens
        )
        with tracing.span("aqueduct.reserve"):
            admission = await self.limiter.reserve(
                principal, usage.input_tokens, estimate.max_output_tokens, rid
            )
        return parsed, admission, usage

    def _finish(
        self, admission: Admission, usage: Usage, error: ApiError | None, call: Call
    ) -> None:
        """However a request ended: stop the call, record how, settle its quota."""
        call.finish(answered=usage.completed)
        usage.ended(error)
        self.limiter.settle(admission, usage)
        self.metrics.finished(
            self.route.name, self.route.operation, usage, admission.principal.team
        )


def end_request_span(span: Span, requested: str, usage: Usage) -> None:
    """The request's span ends with what the ledger row says (GenAI conventions)."""
    tracing.end(
        span,
        usage.error_code if usage.status >= 400 else None,
        **{
            "http.response.status_code": usage.status,
            "gen_ai.request.model": requested,
            "gen_ai.response.model": usage.model,
            "gen_ai.usage.input_tokens": usage.input_tokens,
            "gen_ai.usage.output_tokens": usage.output_tokens,
        },
    )


async def read_message(call: Call, usage: Usage) -> Message:
    try:
        message = await call.read()
    except grpc.aio.AioRpcError as error:
        raise from_rpc_error(error, "inference") from None
    if not isinstance(
        message, pb.StreamChatCompletionResponse | pb.StreamCompletionResponse
    ):  # grpc.aio.EOF
        raise ApiError(
            502,
            "The inference stream ended without a summary.",
            type="server_error",
            code="incomplete_stream",
        )
    if message.HasField("summary"):
        summary = message.summary
        usage.model = summary.model or usage.model
        usage.input_tokens = summary.usage.prompt_tokens
        usage.output_tokens = summary.usage.completion_tokens
        usage.completed = True
    else:
        usage.mark_first_token()
        usage.model = message.deltas.model or usage.model
        usage.streamed_chars += sum(len(d.content) for d in message.deltas.deltas)
        usage.streamed_tokens += sum(d.tokens for d in message.deltas.deltas)
    return message


def render(writer: Writer, message: Message) -> bytes:
    if message.HasField("summary"):
        # An answer without text names who served it only here.
        writer.meta.model = message.summary.model or writer.meta.model
        writer.meta.provider = message.summary.provider or writer.meta.provider
        return writer.finish(message.summary)
    if message.deltas.model:
        writer.meta.model = message.deltas.model
        writer.meta.provider = message.deltas.provider
    return writer.deltas(message.deltas)


async def sse_events(call: Call, writer: Writer, usage: Usage) -> AsyncGenerator[bytes, None]:
    """The rest of the stream as SSE bytes; an error after the start is one event."""
    try:
        while not usage.completed:
            yield render(writer, await read_message(call, usage))
    except ApiError as error:
        usage.failed(error)
        yield error_event(error)


async def collect(
    call: Call, meta: Completion, usage: Usage
) -> tuple[dict[int, ChoiceText], pb.Summary]:
    """A whole non-streamed answer: each choice's text, then the summary."""
    choices: dict[int, ChoiceText] = {}
    while True:
        message = await read_message(call, usage)
        if message.HasField("summary"):
            return choices, message.summary
        if message.deltas.model:
            meta.model = message.deltas.model
            meta.provider = message.deltas.provider
        gather(choices, message.deltas)
