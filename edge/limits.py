"""Quota around each request: reserve before, settle after (off the request path).

The settle also writes the request's ledger row, so it runs for every admitted
request however it ends: finished, failed, or cut by the client.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc
from aqueduct.auth.v1 import auth_pb2 as pb
from aqueduct.inference.v1 import inference_pb2

from core import tracing
from core.limit_names import LIMIT_NAMES
from core.status import error_info
from edge.errors import UNLIMITED_RATE_HEADERS, ApiError, duration, from_rpc_error
from edge.settles import SettleQueue

if TYPE_CHECKING:
    from aqueduct.auth.v1.auth_pb2_grpc import AuthServiceAsyncStub

log = logging.getLogger(__name__)
RESERVE_TIMEOUT_S = 5.0
CHARS_PER_TOKEN = 4  # a deliberately generous estimate; settling corrects it
TOKENS_PER_MESSAGE = 4


def estimate_input_tokens(request: inference_pb2.StreamChatCompletionRequest) -> int:
    chars = sum(len(m.content) + len(m.role) for m in request.messages)
    return chars // CHARS_PER_TOKEN + TOKENS_PER_MESSAGE * len(request.messages)


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
    ended_at: float | None = None
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
        self.ended_at = time.monotonic()
        if error is not None:
            self.failed(error)
        elif not self.completed and not self.error_code:
            self.status, self.error_code = 499, "client_disconnected"
        if not self.completed:
            self.output_tokens = self.streamed_tokens or estimate_tokens(self.streamed_chars)

    def record(self, principal: pb.Principal) -> pb.UsageRecord:
        now = self.ended_at or time.monotonic()
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
    headers: Mapping[str, str]  # x-ratelimit-*: shared, never changed


def rate_headers(answer: pb.ReserveQuotaResponse) -> dict[str, str]:
    headers = dict(UNLIMITED_RATE_HEADERS)
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
    """Reserve through auth (skipped for keys with no limits at all); settle
    through a queue that delivers every settle while the edge runs."""

    def __init__(self, stub: AuthServiceAsyncStub, default_output_tokens: int) -> None:
        self.stub = stub
        self.default_output_tokens = default_output_tokens
        self.settles = SettleQueue(stub)
        # Requests refused by a limit, by (limit, scope, team), for /metrics.
        self.rate_limited: dict[tuple[str, str, str], int] = {}

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
            return Admission(principal, reservation, UNLIMITED_RATE_HEADERS)
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
                metadata=tracing.call_metadata(request_id),
            )
        except grpc.aio.AioRpcError as error:
            mapped = from_rpc_error(error, "auth")
            if mapped.status == 429:
                self._count_rate_limited(error, principal.team)
            raise mapped from None
        return Admission(principal, answer.reservation, rate_headers(answer))

    def _count_rate_limited(self, error: grpc.aio.AioRpcError, team: str) -> None:
        info = error_info(error)
        details = info.metadata if info is not None else {}
        key = (details.get("limit", ""), details.get("scope", ""), team)
        self.rate_limited[key] = self.rate_limited.get(key, 0) + 1

    def settle(self, admission: Admission, usage: Usage) -> None:
        """Queue the settle (edge/settles.py); the answer never waits for it.

        A settle that gives back limits (slots, tokens) is sent at once; one that
        only carries a ledger row (a key without limits) may wait a little for
        others, so that even a lightly loaded edge sends few calls.
        """
        self.settles.add(
            pb.Settlement(
                reservation=admission.reservation, usage=usage.record(admission.principal)
            ),
            urgent=not unlimited(admission.principal),
        )

    async def drain(self, timeout: float = 10.0) -> None:
        """Send what is queued and wait for it (at shutdown), so no usage is lost."""
        await self.settles.drain(timeout)


def estimate_completion_input_tokens(request: inference_pb2.StreamCompletionRequest) -> int:
    chars = sum(len(p.text) for p in request.prompts if p.HasField("text")) + len(request.suffix)
    ids = sum(len(p.tokens.ids) for p in request.prompts if p.HasField("tokens"))
    return chars // CHARS_PER_TOKEN + ids + len(request.prompts)
