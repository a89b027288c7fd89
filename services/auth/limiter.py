"""Rate limits as token buckets, reserved up front and settled afterwards.

Every limit is a bucket that holds at most `capacity` (the per-minute limit) and
refills continuously at capacity/60 per second, so a key with `rpm: 60` may
burst 60 requests and then gets one a second. A request reserves, atomically
and all-or-nothing: 1 from each `rpm` bucket, its estimated input tokens from
each `input_tpm` bucket, its output budget (`max_tokens`, or a default) from
each `output_tpm` bucket, and a concurrency slot under each `max_concurrent`.
Settling gives back what was reserved but not used (or takes the overrun) and
frees the slot. A request larger than a whole bucket is admitted only when
that bucket is full, and leaves it in debt.

Slots are leases that expire, so a caller that dies before settling cannot
leak concurrency forever. This module is the arithmetic; `counters*.py` hold
the state (in process, or in Redis for many auth replicas).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

WINDOW_S = 60.0
# The limits kept as token buckets; max_concurrent is counted in slots instead.
BUCKET_LIMITS = ("rpm", "input_tpm", "output_tpm")


@dataclass(frozen=True, slots=True)
class Bucket:
    limit: str  # "rpm" | "input_tpm" | "output_tpm"
    scope: str  # "key" | "team"
    owner: str  # key id or team name
    capacity: int
    amount: int

    @property
    def state_key(self) -> str:
        return f"aq:bucket:{self.scope}:{self.owner}:{self.limit}"


@dataclass(frozen=True, slots=True)
class Slot:
    scope: str
    owner: str
    capacity: int

    @property
    def state_key(self) -> str:
        return f"aq:slots:{self.scope}:{self.owner}"


@dataclass(frozen=True, slots=True)
class Demand:
    """All that one request (or a lease's block of them) takes; empty when the
    key and team are unlimited."""

    buckets: tuple[Bucket, ...]
    slots: tuple[Slot, ...]
    slot_count: int = 1  # slots taken under each max_concurrent limit
    block: bool = False  # a lease: must fit whole, no oversized-request exception

    def __bool__(self) -> bool:
        return bool(self.buckets or self.slots)


@dataclass(frozen=True, slots=True)
class BucketLevel:
    bucket: Bucket
    tokens: float  # after this request's reservation (or before, when refused)

    @property
    def reset_s(self) -> float:
        """Seconds until the bucket is full again."""
        missing = self.bucket.capacity - self.tokens
        return max(0.0, missing * WINDOW_S / self.bucket.capacity)


class LimitExceeded(Exception):
    def __init__(
        self, limit: str, scope: str, capacity: int, retry_after_s: float, levels: list[BucketLevel]
    ) -> None:
        super().__init__(f"{scope} {limit} limit {capacity} exceeded")
        self.limit = limit
        self.scope = scope
        self.capacity = capacity
        self.retry_after_s = retry_after_s
        self.levels = levels


def refill(tokens: float, last: float, now: float, capacity: int) -> float:
    return min(float(capacity), tokens + max(0.0, now - last) * capacity / WINDOW_S)


def shortfall_wait(tokens: float, amount: int, capacity: int, block: bool = False) -> float:
    """Seconds until `amount` fits (0 if it fits now); whole-bucket requests need a
    full bucket, a lease's block (which is never larger than a bucket) all of it."""
    need = amount if block else min(amount, capacity)
    if tokens >= need:
        return 0.0
    if need > capacity:  # a block larger than the bucket never fits: a minute says "smaller"
        return WINDOW_S
    return (need - tokens) * WINDOW_S / capacity


def demand_for(
    key_id: str,
    team: str,
    key_limits: dict[str, int | None],
    team_limits: dict[str, int | None],
    input_tokens: int,
    output_tokens: int,
    requests: int = 1,
    slots: int = 1,
) -> Demand:
    """What a reservation takes: one request, or (requests or slots above 1) a
    lease's block of `requests` with the block's token totals and `slots` slots."""
    amounts = {
        "rpm": max(1, requests),
        "input_tpm": max(0, input_tokens),
        "output_tpm": max(0, output_tokens),
    }
    buckets: list[Bucket] = []
    held: list[Slot] = []
    for scope, owner, limits in (("key", key_id, key_limits), ("team", team, team_limits)):
        if scope == "team" and not team:
            continue
        for name in BUCKET_LIMITS:
            capacity = limits.get(name)
            if capacity is not None:
                buckets.append(Bucket(name, scope, owner, capacity, amounts[name]))
        concurrent = limits.get("max_concurrent")
        if concurrent is not None:
            held.append(Slot(scope, owner, concurrent))
    block = requests > 1 or slots > 1
    return Demand(tuple(buckets), tuple(held), max(1, slots), block)


def slot_members(reservation_id: str, count: int, kept: frozenset[int] = frozenset()) -> list[str]:
    """The slot entries of one reservation: its id, or `<id>:<i>` for a lease's many
    (but the `kept` ones: each is the slot of a one-request reservation `<id>:<i>`)."""
    if count <= 1:
        return [reservation_id]
    return [f"{reservation_id}:{i}" for i in range(count) if i not in kept]


def tightest(levels: list[BucketLevel], names: tuple[str, ...]) -> BucketLevel | None:
    """The level of these limits with the least room left, for x-ratelimit-* headers."""
    chosen = [lv for lv in levels if lv.bucket.limit in names]
    return min(chosen, key=lambda lv: lv.tokens / lv.bucket.capacity, default=None)


def whole(tokens: float) -> int:
    return max(0, math.floor(tokens))
