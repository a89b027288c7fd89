"""POST /v1/chat/completions: authenticate, validate, stream from inference, answer."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
from aqueduct.inference.v1 import inference_pb2 as pb
from starlette.requests import Request
from starlette.responses import Response

from edge.auth import Authenticator, require_model_access
from edge.chat_protocol import (
    ChatCall,
    ChatWriter,
    Completion,
    completion_json,
    error_event,
    parse_chat_request,
)
from edge.errors import ApiError, from_rpc_error
from edge.http import EventStream, json_response, read_json, request_id, until_disconnect

if TYPE_CHECKING:
    from aqueduct.inference.v1.inference_pb2_grpc import InferenceServiceAsyncStub

Call = grpc.aio.UnaryStreamCall[pb.StreamChatCompletionRequest, pb.StreamChatCompletionResponse]


class ChatHandler:
    def __init__(
        self,
        authenticator: Authenticator,
        inference: InferenceServiceAsyncStub,
        max_body_bytes: int,
    ) -> None:
        self.authenticator = authenticator
        self.inference = inference
        self.max_body_bytes = max_body_bytes

    async def __call__(self, request: Request) -> Response | EventStream:
        rid = request_id(request)
        principal = await self.authenticator.authenticate(request.headers, rid)
        chat = parse_chat_request(await read_json(request, self.max_body_bytes))
        require_model_access(principal, chat.request.model)
        meta = Completion(
            "chatcmpl-" + secrets.token_urlsafe(18), int(time.time()), chat.request.model
        )
        call = self.inference.StreamChatCompletion(
            chat.request, metadata=(("x-request-id", rid), ("x-aqueduct-key-id", principal.key_id))
        )
        headers = {"x-request-id": rid}
        if chat.stream:
            return await self._stream(call, chat, meta, headers)
        body = await until_disconnect(request.receive, _collect(call, meta))
        return json_response(body, headers=headers)

    async def _stream(
        self, call: Call, chat: ChatCall, meta: Completion, headers: dict[str, str]
    ) -> EventStream:
        writer = ChatWriter(meta, chat.include_usage)
        # Wait for the first message before answering 200, so errors that come
        # before any text (unknown model, overload) get their proper HTTP status.
        first = await _read(call)
        return EventStream(writer.start() + _render(writer, first), _events(call, writer), headers)


async def _read(call: Call) -> pb.StreamChatCompletionResponse:
    try:
        message = await call.read()
    except grpc.aio.AioRpcError as error:
        raise from_rpc_error(error, "inference") from None
    if not isinstance(message, pb.StreamChatCompletionResponse):  # grpc.aio.EOF
        raise ApiError(
            502,
            "The inference stream ended without a summary.",
            type="server_error",
            code="incomplete_stream",
        )
    return message


def _render(writer: ChatWriter, message: pb.StreamChatCompletionResponse) -> bytes:
    if message.HasField("summary"):
        return writer.finish(message.summary)
    if message.deltas.model:
        writer.meta.model = message.deltas.model
    return writer.deltas(message.deltas)


async def _events(call: Call, writer: ChatWriter) -> AsyncIterator[bytes]:
    """The rest of the stream as SSE bytes; an error after the start is one event."""
    try:
        while True:
            message = await _read(call)
            yield _render(writer, message)
            if message.HasField("summary"):
                return
    except ApiError as error:
        yield error_event(error)
    finally:
        call.cancel()


async def _collect(call: Call, meta: Completion) -> bytes:
    parts: list[str] = []
    try:
        while True:
            message = await _read(call)
            if message.HasField("summary"):
                return completion_json(meta, "".join(parts), message.summary)
            if message.deltas.model:
                meta.model = message.deltas.model
            parts.extend(d.content for d in message.deltas.deltas if d.choice_index == 0)
    finally:
        call.cancel()
