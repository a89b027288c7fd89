"""The one path every generation route takes.

parse → prepare → model access → file parts → reserve → call → stream or collect
→ keep → settle. A route (edge/chat.py, edge/completions.py, edge/responses.py)
supplies only its parser, its renderers, its token estimate and, if it has state
kept elsewhere (the Responses API's stored conversations), what to fetch before
and keep after; everything else, and the rule that every admitted request
settles exactly once however it ends, lives here.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import grpc
from aqueduct.auth.v1 import auth_pb2 as auth_pb
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
from edge.line_outcome import BeforeCall, LineOutcome, error_outcome
from edge.metrics import EdgeMetrics
from edge.prepared_calls import GenerationCall, GenerationCalls, WholeCall
from edge.rendering import ChoiceText, Completion, gather

GenerationRequest = pb.StreamChatCompletionRequest | pb.StreamCompletionRequest
# A stream's messages (deltas or the summary), or a whole answer (both).
Message = (
    pb.StreamChatCompletionResponse
    | pb.StreamCompletionResponse
    | pb.ChatCompletionResponse
    | pb.CompletionResponse
)
Call = GenerationCall[Any, Any] | WholeCall[Any, Any]


def interrupted() -> ApiError:
    return ApiError(500, "The request was interrupted.", type="server_error", code="interrupted")


class Writer(Protocol):
    """Renders a generation's stream messages as SSE events."""

    meta: Completion

    def start(self) -> bytes: ...

    def deltas(self, batch: pb.DeltaBatch) -> bytes: ...

    def finish(self, summary: pb.Summary) -> bytes: ...

    def error(self, error: ApiError) -> bytes:
        """An error after the stream started: the route's error event."""
        ...


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

    async def prepare(self, parsed: P, team: str, request_id: str) -> P:
        """Before model access is checked: what the request needs fetched (a stored
        conversation it continues); most routes need nothing."""
        ...

    async def keep(self, parsed: P, team: str, answer: bytes | Writer, request_id: str) -> None:
        """Once the answer is whole, before its last bytes go out (the JSON body, or
        the stream's writer): a route that stores answers does it here, and an
        ApiError raised here is the request's answer instead."""
        ...


class PlainRoute:
    """A route that fetches nothing before and keeps nothing after."""

    async def prepare(self, parsed: Any, team: str, request_id: str) -> Any:
        return parsed

    async def keep(self, parsed: Any, team: str, answer: bytes | Writer, request_id: str) -> None:
        return None


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
        call = await self.calls.start(message, stream=parsed.stream)

        def finish(error: ApiError | None) -> None:
            self._finish(admission, usage, error, call)
            if root is not None:
                end_request_span(root, message.model, usage)

        team = team_of(admission.principal)

        async def keep(answer: bytes | Writer) -> None:
            await self.route.keep(parsed, team, answer, rid)

        try:
            if parsed.stream:
                writer = self.route.writer(parsed, meta)
                # Wait for the first message before answering 200, so errors that
                # come before any text (unknown model, overload) keep their status.
                first = render(writer, await read_message(call, usage))  # names the served model
                if usage.completed:
                    await keep(writer)
                return EventStream(
                    writer.start() + first,
                    sse_events(call, writer, usage, keep),
                    headers,
                    on_close=lambda: finish(None),
                )
            choices, summary = await until_disconnect(request.receive, collect(call, meta, usage))
            body = self.route.body(parsed, meta, choices, summary)
            await keep(body)
        except ApiError as error:
            finish(error)
            error.headers.update(headers)
            raise
        except BaseException:  # cancelled, or a bug: the call and the quota still end
            finish(interrupted())
            raise
        finish(None)
        return json_response(body, headers=headers)

    async def run_line(
        self,
        principal: auth_pb.Principal,
        body: object,
        rid: str,
        batch_id: str,
        before_call: BeforeCall,
    ) -> LineOutcome:
        """One batch line, non-streamed, through the same steps as a live request:
        model access, file parts, reserve, call, settle (its ledger row names the batch)."""
        try:
            parsed, admission, usage = await self._admit_body(principal, body, rid, batch_id)
        except ApiError as error:
            self.metrics.refused(self.route.name, error.status)
            return error_outcome(error, rid, refused=True)
        try:
            await before_call()
        except BaseException:  # not sent: the reservation still settles
            usage.ended(interrupted())
            self.limiter.settle(admission, usage)
            raise
        message = parsed.request
        meta = Completion(
            self.route.id_prefix + secrets.token_urlsafe(18), int(time.time()), message.model
        )
        message.request_id = rid
        call = await self.calls.start(message, stream=False)
        try:
            choices, summary = await collect(call, meta, usage)
            answer = self.route.body(parsed, meta, choices, summary)
        except ApiError as error:
            self._finish(admission, usage, error, call)
            return error_outcome(error, rid)
        except BaseException:  # cancelled (the edge stops): the quota still settles
            self._finish(admission, usage, interrupted(), call)
            raise
        self._finish(admission, usage, None, call)
        return LineOutcome(200, answer, rid, None, usage.input_tokens, usage.output_tokens)

    async def _admit(self, request: Request, rid: str) -> tuple[P, Admission, Usage]:
        """Everything before the call: who asks, for what, within which limits."""
        with tracing.span("aqueduct.authenticate"):
            principal = await self.authenticator.authenticate(request.headers, rid)
        return await self._admit_body(principal, await read_json(request, self.max_body_bytes), rid)

    async def _admit_body(
        self, principal: auth_pb.Principal, body: object, rid: str, batch_id: str = ""
    ) -> tuple[P, Admission, Usage]:
        parsed = self.route.parse(body)
        if batch_id and parsed.stream:
            raise ApiError(
                400,
                "A batch line cannot stream; leave out 'stream' or set it to false.",
                param="stream",
                code="stream_unsupported",
            )
        parsed = await self.route.prepare(parsed, team_of(principal), rid)
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
            rid,
            message.model,
            parsed.stream,
            message.user,
            input_tokens=estimate.input_tokens,
            batch_id=batch_id,
            route=self.route.name,
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
    if not isinstance(message, Message):  # grpc.aio.EOF
        raise ApiError(
            502,
            "The inference stream ended without a summary.",
            type="server_error",
            code="incomplete_stream",
        )
    if message.HasField("summary"):
        if message.HasField("deltas"):  # a whole answer: its text came now
            usage.mark_first_token()
        summary = message.summary
        usage.model = summary.model or usage.model
        usage.input_tokens = summary.usage.prompt_tokens
        usage.output_tokens = summary.usage.completion_tokens
        usage.completed = True
    else:
        usage.mark_first_token()
        usage.model = message.deltas.model or usage.model
        for delta in message.deltas.deltas:
            usage.streamed_chars += len(delta.content)
            usage.streamed_tokens += delta.tokens
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


async def sse_events(
    call: Call, writer: Writer, usage: Usage, keep: Callable[[Writer], Awaitable[None]]
) -> AsyncGenerator[bytes, None]:
    """The rest of the stream as SSE bytes; an error after the start is one event."""
    try:
        while not usage.completed:
            events = render(writer, await read_message(call, usage))
            if usage.completed:
                await keep(writer)
            yield events
    except ApiError as error:
        usage.failed(error)
        yield writer.error(error)


async def collect(
    call: Call, meta: Completion, usage: Usage
) -> tuple[dict[int, ChoiceText], pb.Summary]:
    """A whole non-streamed answer: each choice's text, then the summary (in one
    message from the unary methods, in several from a stream)."""
    choices: dict[int, ChoiceText] = {}
    while True:
        message = await read_message(call, usage)
        if message.HasField("deltas"):
            if message.deltas.model:
                meta.model = message.deltas.model
                meta.provider = message.deltas.provider
            gather(choices, message.deltas)
        if message.HasField("summary"):
            return choices, message.summary
