"""Quota around each request: reserve before, settle after (off the request path).

The settle also writes the request's ledger row, so it runs for every admitted
request however it ends: finished, failed, or cut by the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc
from aqueduct.auth.v1 import auth_pb2 as pb
from aqueduct.inference.v1 import inference_pb2

from core.limit_names import LIMIT_NAMES
from edge.errors import ApiError, duration, from_rpc_error

if TYPE_CHECKING:
    from aqueduct.auth.v1.auth_pb2_grpc import AuthServiceAsyncStub

log = logging.getLogger(__name__)
RESERVE_TIMEOUT_S = 5.0
SETTLE_TIMEOUT_S = 10.0
SETTLE_ATTEMPTS = 3
LEDGER_BATCH_S = 0.05
CHARS_PER_TOKEN = 4  # a deliberately generous estimate; settling corrects it
TOKENS_PER_MESSAGE = 4


def estimate_input_tokens(request: inference_pb2.StreamChatCompletionRequest) -> int:
    chars = sum(len(m.content) + len(m.role) for m in request.messages)
    return chars // CHARS_PER_TOKEN + TOKENS_PER_MESSAGE * len(request.messages)


CLIENT_GONE = ApiError(
    499, "Client closed the request.", type="cancelled", code="client_disconnected"
)


def estimate_embedding_tokens(request: inference_pb2.CreateEmbeddingsRequest) -> int:
    chars = sum(len(i.text) for i in request.inputs if i.HasField("text"))
    ids = sum(len(i.tokens.ids) for i in request.inputs if i.HasField("tokens"))
    return chars // CHARS_PER_TOKEN + ids + len(request.inputs)


def estimate_tokens(text_chars: int) -> int:
    return -(-text_chars // CHARS_PER_TOKEN)


@dataclass
class Usage:
    """What one request used, filled in as it runs; becomes its ledger row."""

    request_id: str
    model: str
    stream: bool
    user: str
    created_at: float = field(default_factory=time.time)
    started: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    status: int = 200
    error_code: str = ""
    completed: bool = False  # the summary arrived: token counts are exact
    streamed_chars: int = 0  # text received so far, for an estimate if cut short
    streamed_tokens: int = 0  # tokens the deltas reported, exact when the backend counts

    def mark_first_token(self) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()

    def failed(self, error: ApiError) -> None:
        self.status, self.error_code = error.status, error.code or error.type

    def ended(self, error: ApiError | None) -> None:
        """Close the books: an error, or a cut before the summary, is recorded as such."""
        if error is not None:
            self.failed(error)
        elif not self.completed and not self.error_code:
            self.failed(CLIENT_GONE)
        if not self.completed:
            self.output_tokens = self.streamed_tokens or estimate_tokens(self.streamed_chars)

    def record(self, principal: pb.Principal) -> pb.UsageRecord:
        now = time.monotonic()
        return pb.UsageRecord(
            request_id=self.request_id,
            key_id=principal.key_id,
            team=principal.team,
            model=self.model,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            latency_ms=round((now - self.started) * 1000),
            ttft_ms=round((self.first_token_at - self.started) * 1000)
            if self.first_token_at
            else 0,
            status=self.status,
            error_code=self.error_code,
            user=self.user,
            stream=self.stream,
            created_at=self.created_at,
        )


@dataclass
class Admission:
    principal: pb.Principal
    reservation: pb.Reservation
    headers: dict[str, str]


def rate_headers(answer: pb.ReserveQuotaResponse) -> dict[str, str]:
    headers = {}
    for kind, status in (("requests", answer.requests), ("tokens", answer.tokens)):
        if status.limited:
            headers[f"x-ratelimit-limit-{kind}"] = str(status.limit)
            headers[f"x-ratelimit-remaining-{kind}"] = str(status.remaining)
            headers[f"x-ratelimit-reset-{kind}"] = duration(status.reset_s)
    return headers


def unlimited(principal: pb.Principal) -> bool:
    return not any(
        limits.HasField(name)
        for limits in (principal.limits, principal.team_limits)
        for name in LIMIT_NAMES
    )


class Limiter:
    """Reserve through auth (skipped for keys with no limits at all), settle in
    batches: settles queue up while one SettleQuotas call is in flight and go in
    the next, so a busy edge sends one call per round trip, not per request,
    and an idle one sends each settle at once."""

    def __init__(self, stub: AuthServiceAsyncStub, default_output_tokens: int) -> None:
        self.stub = stub
        self.default_output_tokens = default_output_tokens
        self._queue: list[pb.Settlement] = []
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._sending = False
        self._timer: asyncio.TimerHandle | None = None

    async def reserve(
        self, principal: pb.Principal, input_tokens: int, max_tokens: int | None, request_id: str
    ) -> Admission:
        """Take the request's share of every limit; `max_tokens` None reserves the default."""
        output_tokens = self.default_output_tokens if max_tokens is None else max_tokens
        if unlimited(principal):  # nothing to count: only the ledger row, at settle
            reservation = pb.Reservation(
                id=uuid.uuid4().hex,
                key_id=principal.key_id,
                team=principal.team,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
            )
            return Admission(principal, reservation, {})
        try:
            answer = await self.stub.ReserveQuota(
                pb.ReserveQuotaRequest(
                    key_id=principal.key_id,
                    team=principal.team,
                    key_limits=principal.limits,
                    team_limits=principal.team_limits,
                    input_tokens=input_tokens,
                    output_tokens=output_tokens,
                ),
                timeout=RESERVE_TIMEOUT_S,
                metadata=(("x-request-id", request_id),),
            )
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error, "auth") from None
        return Admission(principal, answer.reservation, rate_headers(answer))

    def settle(self, admission: Admission, usage: Usage) -> None:
        """Queue the settle; the answer never waits for it.

        A settle that gives back limits (slots, tokens) is sent at once. One that
        only carries a ledger row (a key without limits) may wait up to
        LEDGER_BATCH_S, so that even a lightly loaded edge sends few calls.
        """
        self._queue.append(
            pb.Settlement(
                reservation=admission.reservation, usage=usage.record(admission.principal)
            )
        )
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_loop())
        if not unlimited(admission.principal):
            self._wake.set()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(LEDGER_BATCH_S, self._wake_now)

    def _wake_now(self) -> None:
        self._timer = None
        self._wake.set()

    async def _flush_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch, self._queue = self._queue, []
                self._sending = True
                try:
                    await self._send(batch)
                finally:
                    self._sending = False

    async def _send(self, batch: list[pb.Settlement]) -> None:
        request = pb.SettleQuotasRequest(settles=batch)
        for attempt in range(SETTLE_ATTEMPTS):
            try:
                await self.stub.SettleQuotas(request, timeout=SETTLE_TIMEOUT_S)
                return
            except grpc.aio.AioRpcError as error:
                log.warning(
                    "settle failed",
                    extra={"settles": len(batch), "code": error.code().name, "attempt": attempt},
                )
                await asyncio.sleep(0.2 * (attempt + 1))
        log.error(
            "settles abandoned; their slots free when their leases end",
            extra={"settles": len(batch)},
        )

    async def drain(self, timeout: float = 10.0) -> None:
        """Send what is queued and wait for it (at shutdown), so no usage is lost."""
        if self._flusher is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._wake.set()
        while (self._queue or self._sending) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        self._flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._flusher


def estimate_completion_input_tokens(request: inference_pb2.StreamCompletionRequest) -> int:
    chars = sum(len(p.text) for p in request.prompts if p.HasField("text")) + len(request.suffix)
    ids = sum(len(p.tokens.ids) for p in request.prompts if p.HasField("tokens"))
    return chars // CHARS_PER_TOKEN + ids + len(request.prompts)
