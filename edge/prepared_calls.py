"""Generation calls to the inference service, opened before they are needed.

Opening a gRPC call costs most of a millisecond here (set-up on both sides, a
new handler task in the service), and all of it would sit between a request
and its first token. So the edge keeps calls to the service's `Prepared*`
methods open and idle, and sends a request as the one message of such a call;
the service answers it exactly as the plain unary-stream method would.

A request takes the newest prepared call, or opens a plain call if none is
ready. A request that ends while fewer than MAX_SPARES others are running
leaves a new prepared call behind, so the work of opening it falls after the
request rather than on the next one's path. Busier than that, requests go on
plain calls: a prepared call costs a little more CPU in all (a separate write
on each side), and a saturated edge has no idle time to hide it in. A prepared
call older than MAX_AGE_S is closed rather than used (the service ends idle
calls after its own, longer limit), and one that the service closed before
reading the request (that limit, its shutdown, or opened while it drained) is
replaced by a plain call.

A request that does not stream needs none of this: it goes on the unary
method (ChatCompletion, Completion), whose one answer holds all its text.

The prepared methods have their own message types (the contract gives every
method its own), built so that the edge sends and reads the plain method's
messages on them at no extra cost: see prepared_method.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any, Generic, TypeVar

import grpc
from aqueduct.inference.v1 import inference_pb2
from google.protobuf.message import Message

from core.status import error_info

Req = TypeVar("Req")
Resp = TypeVar("Resp")
MAX_SPARES = 8
MAX_AGE_S = 60.0
# The service's reasons for ending a call before reading the request: idle too
# long or at its shutdown (IDLE_CALL_CLOSED), or opened while it drains.
CLOSED_UNREAD = frozenset({"IDLE_CALL_CLOSED", "SHUTTING_DOWN"})
SERVICE = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"]
FIELD_1_TAG = b"\n"  # field 1, length-delimited


def prepared_method(
    channel: grpc.aio.Channel, name: str, plain_response: type[Resp]
) -> grpc.aio.StreamStreamMultiCallable[Any, Resp]:
    """The InferenceService method `name` (a Prepared* one), speaking the plain
    method's messages.

    A Prepared*Request has one field, number 1: the plain request. Its encoding
    is therefore the plain request's encoding behind that field's tag and
    length, written here without building the wrapper (which would copy the
    request). A Prepared*Response has exactly the plain response's fields, so
    it decodes as one (tests/unit/edge/test_prepared_calls.py checks both).
    """
    method = SERVICE.methods_by_name[name]
    return channel.stream_stream(
        f"/{SERVICE.full_name}/{method.name}",
        request_serializer=as_field_1,
        response_deserializer=plain_response.FromString,  # type: ignore[attr-defined]
    )


def whole_method(
    channel: grpc.aio.Channel, name: str, response: type[Resp]
) -> grpc.aio.UnaryUnaryMultiCallable[Any, Resp]:
    """The InferenceService method `name` (a unary one: ChatCompletion,
    Completion), sent the plain request as its request's field 1 (see
    prepared_method)."""
    method = SERVICE.methods_by_name[name]
    return channel.unary_unary(
        f"/{SERVICE.full_name}/{method.name}",
        request_serializer=as_field_1,
        response_deserializer=response.FromString,  # type: ignore[attr-defined]
    )


def as_field_1(request: Message) -> bytes:
    """The encoding of a message whose field 1 is `request`."""
    body = request.SerializeToString()
    size, length = len(body), bytearray()
    while size > 0x7F:  # a base-128 varint, low groups first
        length.append(size & 0x7F | 0x80)
        size >>= 7
    length.append(size)
    return b"".join((FIELD_1_TAG, length, body))


class GenerationCalls(Generic[Req, Resp]):
    """Calls to one generation method: prepared ones kept ready, plain ones else;
    a request that does not stream goes on the unary method, when there is one."""

    def __init__(
        self,
        prepared: grpc.aio.StreamStreamMultiCallable[Req, Resp],
        plain: grpc.aio.UnaryStreamMultiCallable[Req, Resp],
        whole: grpc.aio.UnaryUnaryMultiCallable[Req, Any] | None = None,
        max_spares: int = MAX_SPARES,
        max_age_s: float = MAX_AGE_S,
    ) -> None:
        self._prepared = prepared
        self.plain = plain
        self.whole = whole  # None once the service answers UNIMPLEMENTED (older)
        self.max_spares = max_spares
        self.max_age_s = max_age_s
        self._spares: collections.deque[tuple[float, grpc.aio.StreamStreamCall[Req, Resp]]] = (
            collections.deque()
        )
        self.running = 0  # requests started and not yet finished

    @property
    def ready(self) -> int:
        """Prepared calls kept now (some may have ended unseen)."""
        return len(self._spares)

    async def start(
        self, request: Req, stream: bool = True
    ) -> GenerationCall[Req, Resp] | WholeCall[Req, Resp]:
        """The request under way: its whole answer on the unary method if it does
        not stream, else on a prepared call if one is ready."""
        if not stream and self.whole is not None:
            return WholeCall(self, request, self.whole)
        return await self.start_stream(request)

    async def start_stream(self, request: Req) -> GenerationCall[Req, Resp]:
        """The request on a stream: a prepared call if one is ready, else a plain one."""
        self.running += 1
        spare = self._take()
        if spare is not None:
            try:
                await spare.write(request)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                spare.cancel()  # it ended while we were taking it
            else:
                return GenerationCall(self, request, spare, prepared=True)
        return GenerationCall(self, request, self.plain(request), prepared=False)

    def ended(self) -> None:
        """A request has ended: leave a prepared call behind unless busy."""
        self.running -= 1
        if self.running < self.max_spares:
            self.replenish()

    def replenish(self) -> None:
        """Open one prepared call (at most max_spares kept), and drop dead ones."""
        now = time.monotonic()
        while self._spares and (
            self._spares[0][1].done() or now - self._spares[0][0] > self.max_age_s
        ):
            self._spares.popleft()[1].cancel()
        if len(self._spares) < self.max_spares:
            self._spares.append((now, self._prepared()))

    def close(self) -> None:
        while self._spares:
            self._spares.pop()[1].cancel()

    def _take(self) -> grpc.aio.StreamStreamCall[Req, Resp] | None:
        now = time.monotonic()
        while self._spares:
            opened, call = self._spares.pop()  # the newest
            if call.done():
                continue
            if now - opened > self.max_age_s:  # and so is every older one
                call.cancel()
                self.close()
                return None
            return call
        return None


class GenerationCall(Generic[Req, Resp]):
    """One request's call, as the handlers use it."""

    __slots__ = ("_call", "_calls", "_prepared", "_request")

    def __init__(
        self,
        calls: GenerationCalls[Req, Resp],
        request: Req,
        call: grpc.aio.StreamStreamCall[Req, Resp] | grpc.aio.UnaryStreamCall[Req, Resp],
        prepared: bool,
    ) -> None:
        self._calls = calls
        self._request = request
        self._call = call
        self._prepared = prepared

    async def read(self) -> object:
        """The next message, or grpc.aio.EOF; raises AioRpcError as the call would."""
        try:
            return await self._call.read()
        except grpc.aio.AioRpcError as error:
            if not (self._prepared and _closed_unread(error)):
                raise
        self._prepared = False  # send it again, on a plain call
        self._call = self._calls.plain(self._request)
        return await self._call.read()

    def finish(self, answered: bool) -> None:
        """However the request ended: stop its call, leave a prepared one behind.

        A call whose answer came in full (its summary) is not cancelled: the
        service has finished and its status is on the way, and a cancel would
        cost both sides a stream reset for nothing.
        """
        if not answered and not self._call.done():
            self._call.cancel()
        self._calls.ended()


class WholeCall(Generic[Req, Resp]):
    """A request that does not stream, on the unary method: one message holding
    all its deltas and its summary. If the service is older than the unary
    methods, the request goes on a stream instead, and so do all after it."""

    __slots__ = ("_call", "_calls", "_request", "_stream")

    def __init__(
        self,
        calls: GenerationCalls[Req, Resp],
        request: Req,
        whole: grpc.aio.UnaryUnaryMultiCallable[Req, Any],
    ) -> None:
        self._calls = calls
        self._request = request
        self._call = whole(request)
        self._stream: GenerationCall[Req, Resp] | None = None

    async def read(self) -> object:
        """The whole answer; raises AioRpcError as the call would."""
        if self._stream is not None:
            return await self._stream.read()
        try:
            return await self._call
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise
        self._calls.whole = None
        self._stream = await self._calls.start_stream(self._request)
        return await self._stream.read()

    def finish(self, answered: bool) -> None:
        if self._stream is not None:
            self._stream.finish(answered)
        elif not answered and not self._call.done():
            self._call.cancel()


def _closed_unread(error: grpc.aio.AioRpcError) -> bool:
    if error.code() != grpc.StatusCode.UNAVAILABLE:
        return False
    info = error_info(error)
    return info is not None and info.reason in CLOSED_UNREAD
