"""POST /v1/chat/completions: authenticate, validate, reserve quota, stream from
inference, answer, settle."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncGenerator
from typing import Any, Protocol

import grpc
from aqueduct.inference.v1 import inference_pb2 as pb
from starlette.requests import Request
from starlette.responses import Response

from edge.auth import Authenticator, require_model_access
from edge.chat_protocol import (
    ChatWriter,
    ChoiceText,
    Completion,
    completion_json,
    error_event,
    gather,
    parse_chat_request,
)
from edge.errors import ApiError, from_rpc_error
from edge.file_parts import FilePartResolver
from edge.files import team_of
from edge.http import EventStream, json_response, read_json, request_id, until_disconnect
from edge.limits import Admission, Limiter, Usage, estimate_input_tokens
from edge.prepared_calls import GenerationCall, GenerationCalls

Message = pb.StreamChatCompletionResponse | pb.StreamCompletionResponse
Call = GenerationCall[Any, Any]
INTERRUPTED = ApiError(500, "The request was interrupted.", type="server_error", code="interrupted")
ChatCalls = GenerationCalls[pb.StreamChatCompletionRequest, pb.StreamChatCompletionResponse]


class Writer(Protocol):
    """Renders a generation's stream messages as SSE events (chat or completions)."""

    meta: Completion

    def deltas(self, batch: pb.DeltaBatch) -> bytes: ...

    def finish(self, summary: pb.Summary) -> bytes: ...


class ChatHandler:
    def __init__(
        self,
        authenticator: Authenticator,
        limiter: Limiter,
        calls: ChatCalls,
        max_body_bytes: int,
        file_parts: FilePartResolver | None = None,
    ) -> None:
        self.authenticator = authenticator
        self.limiter = limiter
        self.calls = calls
        self.max_body_bytes = max_body_bytes
        self.file_parts = file_parts

    async def __call__(self, request: Request) -> Response | EventStream:
        rid = request_id(request)
        principal = await self.authenticator.authenticate(request.headers, rid)
        chat = parse_chat_request(await read_json(request, self.max_body_bytes))
        require_model_access(principal, chat.request.model, chat.request.fallback_models)
        # File parts -> text (edge/file_parts.py): after parsing, before inference.
        if chat.pending and self.file_parts is not None:
            await self.file_parts.resolve(chat, team_of(principal), rid)
        usage = Usage(
            rid,
            chat.request.model,
            chat.stream,
            chat.request.user,
            input_tokens=estimate_input_tokens(chat.request),
        )
        sampling = chat.request.sampling
        admission = await self.limiter.reserve(
            principal,
            usage.input_tokens,
            sampling.max_tokens * max(sampling.n, 1) if sampling.HasField("max_tokens") else None,
            rid,
        )
        headers = {"x-request-id": rid, **admission.headers}
        meta = Completion(
            "chatcmpl-" + secrets.token_urlsafe(18), int(time.time()), chat.request.model
        )
        # The id rides in the message: call metadata costs ~100 us a call in grpc.aio.
        chat.request.request_id = rid
        call = await self.calls.start(chat.request)
        try:
            if chat.stream:
                sampling = chat.request.sampling
                writer = ChatWriter(
                    meta,
                    chat.include_usage,
                    sampling.n if sampling.HasField("n") else 1,
                    sampling.logprobs,
                )
                # Wait for the first message before answering 200, so errors that
                # come before any text (unknown model, overload) keep their status.
                first = render(writer, await read_message(call, usage))  # names the served model
                return EventStream(
                    writer.start() + first,
                    sse_events(call, writer, usage),
                    headers,
                    on_close=lambda: finish_request(self.limiter, admission, usage, None, call),
                )
            choices, summary = await until_disconnect(request.receive, collect(call, meta, usage))
            body = completion_json(meta, choices, summary, chat.request.sampling.logprobs)
        except ApiError as error:
            finish_request(self.limiter, admission, usage, error, call)
            error.headers.update(headers)
            raise
        except BaseException:  # cancelled, or a bug: the call and the quota still end
            finish_request(self.limiter, admission, usage, INTERRUPTED, call)
            raise
        finish_request(self.limiter, admission, usage, None, call)
        return json_response(body, headers=headers)


def finish_request(
    limiter: Limiter, admission: Admission, usage: Usage, error: ApiError | None, call: Call
) -> None:
    """However a request ended: stop the call, record how, settle its quota."""
    call.finish(answered=usage.completed)
    usage.ended(error)
    limiter.settle(admission, usage)


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
