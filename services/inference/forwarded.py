"""A local model that another inference worker runs (AQUEDUCT_LOCAL_MODELS_ADDR).

With several inference workers on one machine, the bundled models are loaded
by one of them only (their memory counted once). The others serve every
upstream model themselves and hand each request for a local model to that
worker, as this backend: the router here picks the model (aliases, the
caller's fallbacks, configured fallbacks, allowed models), so the request goes
for exactly that model, none of its configured fallbacks, and comes back as
the same events the model would have produced here. Errors come back as the
owner raised them (a busy model is still UNAVAILABLE, so fallbacks work);
closing the stream (the client went away, its deadline passed) cancels the
forwarded call, which stops the generation over there.

Metering stays with the worker the caller reached: the owner sees the
forwarding worker's identity (or no identity, without mTLS), never a key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable
from dataclasses import replace
from typing import Any, TypeVar

import grpc
from aqueduct.inference.v1 import inference_pb2 as pb
from aqueduct.inference.v1 import inference_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from core import tracing
from core.errors import Kind, ServiceError
from core.request_id import REQUEST_ID
from core.status import error_info
from services.inference import wire
from services.inference.embedding import Embeddings, EmbedRequest
from services.inference.generation import ChatRequest, CompletionRequest, Event

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["InferenceService"].full_name
HEALTH_POLL_S = 0.2
HEALTH_TIMEOUT_S = 1.0
# The owner's reasons for refusing a call because it is stopping.
OWNER_STOPPING = frozenset({"SHUTTING_DOWN", "IDLE_CALL_CLOSED"})


class LocalModelsPeer:
    """The channel to the worker that runs the local models, shared by every
    forwarded model of this process."""

    def __init__(self, address: str, channel: grpc.aio.Channel) -> None:
        self.address = address
        self.channel = channel
        self.stub = inference_pb2_grpc.InferenceServiceStub(channel)
        self._check = health_pb2_grpc.HealthStub(channel).Check  # type: ignore[attr-defined]

    async def serving(self) -> None:
        """Wait until the owner serves (it may still be loading the models):
        this worker is not ready before its local models are."""
        said = False
        while True:
            with contextlib.suppress(grpc.aio.AioRpcError):
                answer = await self._check(
                    health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=HEALTH_TIMEOUT_S
                )
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            if not said:
                log.info(
                    "waiting for the worker that runs the local models",
                    extra={"address": self.address},
                )
                said = True
            await asyncio.sleep(HEALTH_POLL_S)

    async def close(self) -> None:
        await self.channel.close()


Message = TypeVar("Message")


def _traced(message: Message) -> Message:
    """The message with this call's request id and trace context, for the owner's logs."""
    message.request_id = REQUEST_ID.get()  # type: ignore[attr-defined]
    message.traceparent = tracing.traceparent()  # type: ignore[attr-defined]
    return message


class ForwardedModel:
    """Chat, completions and embeddings of one local model, served by the peer."""

    def __init__(self, model_id: str, peer: LocalModelsPeer) -> None:
        self.model_id = model_id
        self.peer = peer

    async def start(self) -> None:
        await self.peer.serving()

    async def close(self) -> None:
        return None  # the channel is the peer's, closed with the service

    def stream_chat(self, request: ChatRequest) -> AsyncGenerator[Event, None]:
        message = _traced(wire.chat_message(self._only_this(request)))
        return self._stream(self.peer.stub.StreamChatCompletion, message)

    def stream_completion(self, request: CompletionRequest) -> AsyncGenerator[Event, None]:
        message = _traced(wire.completion_message(self._only_this(request)))
        return self._stream(self.peer.stub.StreamCompletion, message)

    async def embed(self, request: EmbedRequest) -> Embeddings:
        message = _traced(wire.embed_message(self._only_this(request)))
        try:
            return wire.embeddings(await self.peer.stub.CreateEmbeddings(message))
        except grpc.aio.AioRpcError as error:
            raise self._error(error) from None

    def _only_this(self, request: Any) -> Any:
        """The request for this model alone: the router here already chose it
        (and checked the caller may use it)."""
        return replace(
            request,
            model=self.model_id,
            fallback_models=(),
            allowed_models=(),
            configured_fallbacks=False,
        )

    async def _stream(
        self, method: Callable[[Any], Any], message: Any
    ) -> AsyncGenerator[Event, None]:
        call = method(message)
        try:
            async for response in call:
                yield wire.event(response)
        except grpc.aio.AioRpcError as error:
            raise self._error(error) from None
        finally:
            call.cancel()  # closed early: stop the generation over there

    def _error(self, error: grpc.aio.AioRpcError) -> ServiceError:
        """The owner's error as if raised here; the owner unreachable or stopping
        is UNAVAILABLE (so the router may fall back). Not SHUTTING_DOWN: this
        worker is not, and a caller would take that for its own call refused."""
        info = error_info(error)
        code = error.code()
        if info is None or code.name not in Kind.__members__ or info.reason in OWNER_STOPPING:
            log.warning(
                "the worker that runs the local models did not answer",
                extra={"model": self.model_id, "code": code.name, "details": error.details()},
            )
            return ServiceError(
                Kind.UNAVAILABLE,
                "LOCAL_MODEL_UNAVAILABLE",
                f"Model '{self.model_id}' is not reachable now. Retry shortly.",
            )
        metadata = dict(info.metadata)
        param = metadata.pop("param", None)
        return ServiceError(Kind[code.name], info.reason, error.details() or "", param, metadata)
