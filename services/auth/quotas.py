"""Reserve before a request runs, settle when it ends: limits plus the ledger."""

from __future__ import annotations

import asyncio
import enum
import functools
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

from core.errors import Kind, ServiceError
from services.auth.dependencies import Dependency
from services.auth.keys import Limits
from services.auth.ledger import UsageLedger
from services.auth.limiter import BucketLevel, Demand, LimitExceeded, demand_for, tightest

MAX_RESERVATION_ID = 64  # the ledger's column
MAX_LEASE_SLOTS = 10_000  # slots one lease may hold (each is an entry in the counter store)
# A settle's usage may carry these: how many of a lease's requests were admitted,
# and the slot entries its still running requests keep (Settlement's fields).
ADMITTED = "admitted_requests"
KEPT = "kept_slots"


class Counters(Protocol):
    async def reserve(
        self, demand: Demand, reservation_id: str, lease_s: float
    ) -> list[BucketLevel]: ...

    async def settle(
        self,
        demand: Demand,
        reservation_id: str,
        refunds: dict[str, int],
        kept: frozenset[int] = frozenset(),
    ) -> bool:
        """Idempotent per reservation id: False when it was settled before. `kept`:
        a lease's slot entries (indices) left held, each settled later on its own."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class Reservation:
    id: str
    key_id: str
    team: str
    key_limits: Limits
    team_limits: Limits
    input_tokens: int
    output_tokens: int
    requests: int = 1  # above 1 (or slots above 1): a lease, a block the caller admits from
    slots: int = 1

    @functools.cached_property
    def demand(self) -> Demand:
        return demand_for(
            self.key_id,
            self.team,
            self.key_limits.as_dict(),
            self.team_limits.as_dict(),
            self.input_tokens,
            self.output_tokens,
            self.requests,
            self.slots,
        )


@dataclass(frozen=True)
class Admitted:
    reservation: Reservation
    requests: BucketLevel | None  # the tightest rpm bucket, for headers
    tokens: BucketLevel | None  # the tightest token bucket, for headers


def rate_limited(error: LimitExceeded) -> ServiceError:
    who = "this key" if error.scope == "key" else "this key's team"
    unit = {
        "rpm": "requests per minute",
        "input_tpm": "input tokens per minute",
        "output_tpm": "output tokens per minute",
        "max_concurrent": "concurrent requests",
    }[error.limit]
    return ServiceError(
        Kind.RESOURCE_EXHAUSTED,
        "RATE_LIMITED",
        f"Rate limit exceeded: {error.scope} limit '{error.limit}' ({error.capacity} {unit}) "
        f"for {who}. Retry after {error.retry_after_s:.1f} s.",
        metadata={
            "limit": error.limit,
            "scope": error.scope,
            "retry_after_s": f"{error.retry_after_s:.3f}",
            **header_metadata(error.levels),
        },
    )


def header_metadata(levels: list[BucketLevel]) -> dict[str, str]:
    out: dict[str, str] = {}
    for kind, names in (("requests", ("rpm",)), ("tokens", ("input_tpm", "output_tpm"))):
        level = tightest(levels, names)
        if level is not None:
            out[f"limit_{kind}"] = str(level.bucket.capacity)
            out[f"remaining_{kind}"] = str(max(0, int(level.tokens)))
            out[f"reset_{kind}_s"] = f"{level.reset_s:.3f}"
    return out


class Part(enum.Flag):
    """What a settlement ends: the reservation's limits, its ledger row, or both."""

    LIMITS = enum.auto()
    LEDGER = enum.auto()
    BOTH = LIMITS | LEDGER


class Quotas:
    def __init__(
        self, counters: Counters, ledger: UsageLedger, lease_s: float, limits: Dependency
    ) -> None:
        self.counters = counters
        self.ledger = ledger
        self.lease_s = lease_s
        self.limits = limits  # Redis (or this process): its faults answer UNAVAILABLE

    async def reserve(
        self,
        key_id: str,
        team: str,
        key_limits: Limits,
        team_limits: Limits,
        input_tokens: int,
        output_tokens: int,
        requests: int = 1,
        slots: int = 1,
    ) -> Admitted:
        if input_tokens < 0 or output_tokens < 0:
            raise ServiceError(
                Kind.INVALID_ARGUMENT,
                "INVALID_FIELD",
                "token estimates must not be negative",
                param="input_tokens",
            )
        if requests < 0 or not 0 <= slots <= MAX_LEASE_SLOTS:
            raise ServiceError(
                Kind.INVALID_ARGUMENT,
                "INVALID_FIELD",
                f"requests must not be negative and slots must be 0 to {MAX_LEASE_SLOTS}",
                param="slots" if requests >= 0 else "requests",
            )
        reservation = Reservation(
            uuid.uuid4().hex,
            key_id,
            team,
            key_limits,
            team_limits,
            input_tokens,
            output_tokens,
            max(1, requests),
            max(1, slots),
        )
        demand = reservation.demand
        levels: list[BucketLevel] = []
        if demand:
            try:
                with self.limits.guard():
                    levels = await self.counters.reserve(demand, reservation.id, self.lease_s)
            except LimitExceeded as error:
                raise rate_limited(error) from None
        return Admitted(
            reservation, tightest(levels, ("rpm",)), tightest(levels, ("input_tpm", "output_tpm"))
        )

    async def settle(self, settles: list[tuple[Reservation, dict[str, Any], Part]]) -> None:
        """Settle requests: done only when each one's part (counters, ledger row or
        both) is committed. Each part is idempotent (counters by reservation id
        in the counter store, rows by the ledger's unique reservation id), so a
        retry after any failure, here or on another replica, has exactly one
        effect; nothing is remembered in this process."""
        for reservation, _, _ in settles:
            if not 0 < len(reservation.id) <= MAX_RESERVATION_ID:
                raise ServiceError(
                    Kind.INVALID_ARGUMENT,
                    "INVALID_FIELD",
                    "Each settlement needs the id of its reservation "
                    f"(1 to {MAX_RESERVATION_ID} characters).",
                    param="settles.reservation.id",
                )
        rows = [_ledger_row(usage, r.id) for r, usage, part in settles if Part.LEDGER in part]
        parts = [
            self._settle_counters(r, usage)
            for r, usage, part in settles
            if Part.LIMITS in part and r.demand
        ]
        if rows:
            parts.append(self.ledger.record(rows))
        if len(parts) == 1:  # the usual settle: one part, awaited without a task
            await parts[0]
            return
        results = await asyncio.gather(*parts, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _settle_counters(self, reservation: Reservation, usage: dict[str, Any]) -> None:
        refunds = {
            # A lease gives back the requests it did not admit; a request used its one.
            "rpm": reservation.requests - int(usage.get(ADMITTED, reservation.requests)),
            "input_tpm": reservation.input_tokens - int(usage.get("input_tokens", 0)),
            "output_tpm": reservation.output_tokens - int(usage.get("output_tokens", 0)),
        }
        with self.limits.guard():
            kept = frozenset(usage.get(KEPT, ()))
            await self.counters.settle(reservation.demand, reservation.id, refunds, kept)


def _ledger_row(usage: dict[str, Any], reservation_id: str) -> dict[str, Any]:
    """The usage as a ledger row: without a lease settle's fields (only a lease's
    settle carries them, so for every other row the pops find nothing)."""
    row = {**usage, "reservation_id": reservation_id}
    row.pop(ADMITTED, None)
    row.pop(KEPT, None)
    return row
