"""Quota around each request: reserve before, settle after (off the request path).

The settle also writes the request's ledger row, so it runs for every admitted
request however it ends: finished, failed, or cut by the client. Keys whose
limits are large next to one request are admitted from a lease (edge/leases.py)
without a call each; the others reserve per request.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc
from aqueduct.auth.v1 import auth_pb2 as pb

from core import tracing
from core.estimates import estimate_tokens
from core.limit_names import unlimited
from core.settles import SettleQueue
from core.status import error_info
from edge.errors import UNLIMITED_RATE_HEADERS, ApiError, duration, from_rpc_error
from edge.leases import BookKey, LeaseBook, Plan, Taken, book_key, plan_for

if TYPE_CHECKING:
    from aqueduct.auth.v1.auth_pb2_grpc import AuthServiceAsyncStub

log = logging.getLogger(__name__)
RESERVE_TIMEOUT_S = 5.0
# A request's limits settle waits up to RIDE_S for the next reservation to carry
# it (SettleAndReserveQuota), saving auth and the edge a call per request; a
# ledger row waits up to LEDGER_BATCH_S to share a call, and so auth's commit,
# with others (auth commits rows before it answers, and a commit per request
# cost it more CPU than all the rest of the request).
RIDE_S = 0.02
LEDGER_BATCH_S = 0.05
RIDERS = 100  # settles one reservation carries at most
LEASE_TRIES = 3  # leases a request waits for before it reserves on its own


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
    batch_id: str = ""  # the batch this request is a line of; "" for a live request
    route: str = ""  # as the metrics name it: "/v1/chat/completions", ...

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
            batch_id=self.batch_id,
            route=self.route,
        )


@dataclass
class Admission:
    principal: pb.Principal
    reservation: pb.Reservation
    headers: Mapping[str, str]  # x-ratelimit-*: shared, never changed
    lease: Taken | None = None  # admitted from a lease: its share, given back at settle


def rate_headers(answer: pb.ReserveQuotaResponse) -> dict[str, str]:
    headers = dict(UNLIMITED_RATE_HEADERS)
    for kind, status in (("requests", answer.requests), ("tokens", answer.tokens)):
        if status.limited:
            headers[f"x-ratelimit-limit-{kind}"] = str(status.limit)
            headers[f"x-ratelimit-remaining-{kind}"] = str(status.remaining)
            headers[f"x-ratelimit-reset-{kind}"] = duration(status.reset_s)
    return headers


class Limiter:
    """Reserve through auth (skipped for keys with no limits at all); settle
    through a queue that delivers every settle while the edge runs."""

    def __init__(
        self, stub: AuthServiceAsyncStub, default_output_tokens: int, leases: bool = True
    ) -> None:
        self.stub = stub
        self.default_output_tokens = default_output_tokens
        # A settle in two parts: its limits (a slot, unused tokens the next
        # request may need) go back within RIDE_S, its ledger row within
        # LEDGER_BATCH_S.
        self.limit_settles = SettleQueue(stub, wait_s=RIDE_S)
        self.ledger_settles = SettleQueue(stub, wait_s=LEDGER_BATCH_S, paced=True)
        # False once auth answers UNIMPLEMENTED (older than SettleAndReserveQuota).
        self.riding = True
        # Requests refused by a limit, by (limit, scope, team), for /metrics.
        self.rate_limited: dict[tuple[str, str, str], int] = {}
        # Requests admitted, by path: leased, per_request, unlimited (for /metrics).
        self.admissions = {"leased": 0, "per_request": 0, "unlimited": 0}
        self.leases = LeaseBook(self.limit_settles.add)
        # False when leases are off (AQUEDUCT_LIMIT_LEASES=0, or auth is too old).
        self.leasing = leases
        self._leasing: dict[BookKey, asyncio.Future[bool]] = {}  # one lease call per key
        self._lease_refused: dict[BookKey, float] = {}  # no lease asked until then

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
            self.admissions["unlimited"] += 1
            return Admission(principal, reservation, UNLIMITED_RATE_HEADERS)
        if self.leasing:
            leased = await self._from_lease(principal, input_tokens, output_tokens, request_id)
            if leased is not None:
                self.admissions["leased"] += 1
                return leased
        request = reserve_request(principal, input_tokens, output_tokens, request_id)
        try:
            answer = await self._reserve(request)
        except grpc.aio.AioRpcError as error:
            mapped = from_rpc_error(error, "auth")
            if mapped.status == 429:
                self._count_rate_limited(error, principal.team)
            raise mapped from None
        self.admissions["per_request"] += 1
        return Admission(principal, answer.reservation, rate_headers(answer))

    async def _from_lease(
        self, principal: pb.Principal, input_tokens: int, output_tokens: int, request_id: str
    ) -> Admission | None:
        """Admit from the key's lease, leasing anew when it is missing, old or too
        empty; None: this key or request reserves on its own."""
        plan = plan_for(principal, input_tokens, output_tokens)
        if plan is None:
            return None
        key = book_key(principal)
        for _ in range(LEASE_TRIES):
            taken = self.leases.take(key, input_tokens, output_tokens)
            if taken is not None:
                reservation = pb.Reservation(  # its id keys the request's own ledger row
                    id=uuid.uuid4().hex,
                    key_id=principal.key_id,
                    team=principal.team,
                    input_tokens=input_tokens,
                    output_tokens=output_tokens,
                )
                return Admission(principal, reservation, taken.headers, taken)
            if not await self._lease(key, principal, plan, request_id):
                return None
        return None

    async def _lease(
        self, key: BookKey, principal: pb.Principal, plan: Plan, request_id: str
    ) -> bool:
        """Open a lease for `key`, sharing a call already under way (single flight).
        False: auth refused the block or leases are off; the request reserves alone."""
        pending = self._leasing.get(key)
        if pending is None:
            refused_until = self._lease_refused.get(key)
            if refused_until is not None:
                if refused_until > asyncio.get_running_loop().time():
                    return False
                del self._lease_refused[key]
            pending = asyncio.ensure_future(self._lease_call(key, principal, plan, request_id))
            self._leasing[key] = pending
            pending.add_done_callback(lambda done: self._lease_done(key, done))
        # Shielded: a request that goes away leaves the lease call to the others.
        return await asyncio.shield(pending)

    def _lease_done(self, key: BookKey, done: asyncio.Future[bool]) -> None:
        if self._leasing.get(key) is done:
            del self._leasing[key]
        if not done.cancelled():
            done.exception()  # retrieved: the waiters raise it (or none was left)

    async def _lease_call(
        self, key: BookKey, principal: pb.Principal, plan: Plan, request_id: str
    ) -> bool:
        request = reserve_request(
            principal, plan.input_tokens or 0, plan.output_tokens or 0, request_id
        )
        request.requests, request.slots = plan.requests, plan.slots or 1
        try:
            answer = await self._reserve(request)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                # The block does not fit (a request alone may): per request for a while.
                until = asyncio.get_running_loop().time() + self.leases.retire_s
                self._lease_refused[key] = until
                return False
            raise from_rpc_error(error, "auth") from None
        if answer.reservation.requests != plan.requests:
            # An auth older than leases reserved one request with the block's tokens.
            log.info("auth does not lease blocks of requests; reserving per request")
            self.leasing = False
            self.limit_settles.add(_unused(answer.reservation))
            return False
        self.leases.open(key, answer, plan)
        return True

    async def _reserve(self, request: pb.ReserveQuotaRequest) -> pb.ReserveQuotaResponse:
        """ReserveQuota, carrying the limit settles queued meanwhile."""
        if not self.riding:
            return await self.stub.ReserveQuota(request, timeout=RESERVE_TIMEOUT_S)
        riders = self.limit_settles.take(RIDERS)
        try:
            answer = await self.stub.SettleAndReserveQuota(
                pb.SettleAndReserveQuotaRequest(settles=riders, reserve=request),
                timeout=RESERVE_TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as error:
            # Settled or not (a refusal comes after settling), the queue sends them
            # again: settles are idempotent, and this keeps the rule simple.
            self.limit_settles.give_back(riders)
            if error.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise
            log.info("auth has no SettleAndReserveQuota; reserving and settling apart")
            self.riding = False
            return await self.stub.ReserveQuota(request, timeout=RESERVE_TIMEOUT_S)
        except BaseException:  # cancelled mid-call: delivered or not is unknown
            self.limit_settles.give_back(riders)
            raise
        return answer.reserved

    def _count_rate_limited(self, error: grpc.aio.AioRpcError, team: str) -> None:
        info = error_info(error)
        details = info.metadata if info is not None else {}
        key = (details.get("limit", ""), details.get("scope", ""), team)
        self.rate_limited[key] = self.rate_limited.get(key, 0) + 1

    @property
    def settles_pending(self) -> int:
        return self.limit_settles.pending + self.ledger_settles.pending

    @property
    def settles_dropped(self) -> int:
        return self.limit_settles.dropped + self.ledger_settles.dropped

    def settle(self, admission: Admission, usage: Usage) -> None:
        """Queue the settle (core/settles.py); the answer never waits for it."""
        reservation, record = admission.reservation, usage.record(admission.principal)
        if admission.lease is not None:
            self.leases.release(admission.lease, usage.input_tokens, usage.output_tokens)
        elif not unlimited(admission.principal):
            self.limit_settles.add(
                pb.Settlement(reservation=reservation, usage=record, part=pb.SETTLE_PART_LIMITS)
            )
        self.ledger_settles.add(
            pb.Settlement(reservation=reservation, usage=record, part=pb.SETTLE_PART_LEDGER)
        )

    async def drain(self, timeout: float = 10.0) -> None:
        """Settle every lease, send what is queued and wait for it (at shutdown), so
        no usage is lost."""
        self.leases.retire_all()
        await asyncio.gather(self.limit_settles.drain(timeout), self.ledger_settles.drain(timeout))


def reserve_request(
    principal: pb.Principal, input_tokens: int, output_tokens: int, request_id: str
) -> pb.ReserveQuotaRequest:
    """A reservation of one request (a lease sets `requests` and `slots` on it)."""
    return pb.ReserveQuotaRequest(
        key_id=principal.key_id,
        team=principal.team,
        key_limits=principal.limits,
        team_limits=principal.team_limits,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        request_id=request_id,
        traceparent=tracing.traceparent(),
    )


def _unused(reservation: pb.Reservation) -> pb.Settlement:
    """The settle of a reservation nothing was admitted from: all of it goes back."""
    return pb.Settlement(
        reservation=reservation,
        usage=pb.UsageRecord(request_id=reservation.id, key_id=reservation.key_id),
        part=pb.SETTLE_PART_LIMITS,
        admitted_requests=0,
    )
