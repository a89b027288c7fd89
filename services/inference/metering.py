"""Limits and ledger rows for internal callers that present an API key.

The edge meters its own HTTP clients (it reserves before it calls inference
and settles after). A caller that reaches inference directly over mTLS with a
key (services.common.key_scope) gets the same here: the key's limits are
reserved with auth before the generation starts (a refusal is the same
RESOURCE_EXHAUSTED the edge turns into a 429), and one ledger row is settled
after it ends, however it ends. The estimates are the edge's (core.estimates),
so a request reserves the same whichever way it came in. Settles go through
the same retrying queue as the edge's and are drained at shutdown.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import grpc
from aqueduct.auth.v1 import auth_pb2 as pb
from aqueduct.auth.v1 import auth_pb2_grpc

from core.errors import Kind, ServiceError
from core.limit_names import unlimited
from core.request_id import REQUEST_ID
from core.settles import SettleQueue
from core.status import error_info, http_status

RESERVE_TIMEOUT_S = 5.0


@dataclass
class Meter:
    """What one metered call used, filled in as it runs."""

    model: str
    route: str
    stream: bool
    input_tokens: int
    started: float = field(default_factory=time.monotonic)
    created_at: float = field(default_factory=time.time)
    first_token_at: float | None = None
    output_tokens: int = 0
    served: str = ""  # the model that served, when the router said
    completed: bool = False

    def first_token(self) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()

    def finished(self, prompt_tokens: int, completion_tokens: int, served: str) -> None:
        self.input_tokens, self.output_tokens = prompt_tokens, completion_tokens
        self.served, self.completed = served or self.served, True

    def record(self, caller: pb.Principal, status: int, error_code: str) -> pb.UsageRecord:
        now = time.monotonic()
        ttft = self.first_token_at
        return pb.UsageRecord(
            request_id=REQUEST_ID.get(),
            key_id=caller.key_id,
            team=caller.team,
            model=self.served or self.model,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            latency_ms=round((now - self.started) * 1000),
            ttft_ms=round((ttft - self.started) * 1000) if ttft is not None else 0,
            status=status,
            error_code=error_code,
            stream=self.stream,
            created_at=self.created_at,
            route=self.route,
        )


class Metering:
    def __init__(self, channel: grpc.aio.Channel, default_output_tokens: int) -> None:
        self.stub = auth_pb2_grpc.AuthServiceStub(channel)
        self.default_output_tokens = default_output_tokens
        self.settles = SettleQueue(self.stub)

    @asynccontextmanager
    async def metered(
        self,
        caller: pb.Principal,
        route: str,
        model: str,
        input_tokens: int,
        output_tokens: int | None,
        stream: bool = True,
    ) -> AsyncIterator[Meter]:
        """Reserve, run the body, settle exactly once however the body ends."""
        reservation = await self._reserve(caller, input_tokens, output_tokens)
        meter = Meter(model, route, stream, input_tokens)
        status, error_code = 200, ""
        try:
            yield meter
        except ServiceError as error:
            status, error_code = http_status(error), error.reason.lower()
            raise
        except asyncio.CancelledError:
            status, error_code = 499, "client_disconnected"
            raise
        except BaseException:
            status, error_code = 500, "internal_error"
            raise
        finally:
            if status == 200 and not meter.completed:
                status, error_code = 499, "client_disconnected"
            record = meter.record(caller, status, error_code)
            self.settles.add(pb.Settlement(reservation=reservation, usage=record))

    async def _reserve(
        self, caller: pb.Principal, input_tokens: int, output_tokens: int | None
    ) -> pb.Reservation:
        output = self.default_output_tokens if output_tokens is None else output_tokens
        if unlimited(caller):  # nothing to count: only the ledger row, at settle
            return pb.Reservation(
                id=uuid.uuid4().hex,
                key_id=caller.key_id,
                team=caller.team,
                input_tokens=input_tokens,
                output_tokens=output,
            )
        request = pb.ReserveQuotaRequest(
            key_id=caller.key_id,
            team=caller.team,
            input_tokens=input_tokens,
            output_tokens=output,
            request_id=REQUEST_ID.get(),
        )
        try:
            answer = await self.stub.ReserveQuota(request, timeout=RESERVE_TIMEOUT_S)
        except grpc.aio.AioRpcError as error:
            raise _passed_on(error) from None
        return answer.reservation

    async def drain(self, timeout: float = 10.0) -> None:
        """Send what is queued and wait for it (at shutdown), so no usage is lost."""
        await self.settles.drain(timeout)


def _passed_on(error: grpc.aio.AioRpcError) -> ServiceError:
    """Auth's refusal as this call's own: a limit stays RESOURCE_EXHAUSTED with
    its details (which limit, when to retry); auth unreachable is UNAVAILABLE."""
    info = error_info(error)
    code = error.code()
    if info is not None and code in (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.UNAVAILABLE,
    ):
        return ServiceError(
            Kind(code.name), info.reason, error.details() or "", metadata=dict(info.metadata)
        )
    return ServiceError(Kind.UNAVAILABLE, "AUTH_UNAVAILABLE", "The auth service did not answer.")
