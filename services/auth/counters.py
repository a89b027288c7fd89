"""Limit state kept in this process: atomic because the event loop runs one
reservation at a time (no await between check and take)."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from services.auth.limiter import (
    BucketLevel,
    Demand,
    LimitExceeded,
    refill,
    shortfall_wait,
    slot_members,
)

SLOT_RETRY_S = 1.0
SETTLED_MEMORY = 100_000  # reservation ids remembered, for idempotent settles


class MemoryCounters:
    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self._now = now
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, updated_at)
        self._slots: dict[str, dict[str, float]] = {}  # key -> {reservation id: lease expiry}
        self._settled: OrderedDict[str, None] = OrderedDict()

    async def reserve(
        self, demand: Demand, reservation_id: str, lease_s: float
    ) -> list[BucketLevel]:
        now = self._now()
        levels = []
        for bucket in demand.buckets:
            tokens, last = self._buckets.get(bucket.state_key, (float(bucket.capacity), now))
            levels.append(BucketLevel(bucket, refill(tokens, last, now, bucket.capacity)))
        for level in levels:
            wait = shortfall_wait(
                level.tokens, level.bucket.amount, level.bucket.capacity, demand.block
            )
            if wait > 0:
                b = level.bucket
                raise LimitExceeded(b.limit, b.scope, b.capacity, wait, levels)
        for slot in demand.slots:
            leases = self._live_leases(slot.state_key, now)
            if len(leases) + demand.slot_count > slot.capacity:
                raise LimitExceeded(
                    "max_concurrent", slot.scope, slot.capacity, SLOT_RETRY_S, levels
                )
        taken = []
        for level in levels:
            remaining = level.tokens - level.bucket.amount
            self._buckets[level.bucket.state_key] = (remaining, now)
            taken.append(BucketLevel(level.bucket, remaining))
        members = slot_members(reservation_id, demand.slot_count)
        for slot in demand.slots:
            held = self._slots.setdefault(slot.state_key, {})
            for member in members:
                held[member] = now + lease_s
        return taken

    async def settle(
        self,
        demand: Demand,
        reservation_id: str,
        refunds: dict[str, int],
        kept: frozenset[int] = frozenset(),
    ) -> bool:
        """Give back `refunds[limit]` tokens (negative: take more; `rpm`: a lease's
        unused requests) and free the slots but the `kept` entries of a lease,
        once per reservation: False when it was settled before."""
        if reservation_id in self._settled:
            return False
        self._settled[reservation_id] = None
        if len(self._settled) > SETTLED_MEMORY:
            self._settled.popitem(last=False)
        now = self._now()
        for bucket in demand.buckets:
            delta = refunds.get(bucket.limit, 0)
            if not delta:
                continue
            tokens, last = self._buckets.get(bucket.state_key, (float(bucket.capacity), now))
            level = refill(tokens, last, now, bucket.capacity)
            self._buckets[bucket.state_key] = (min(float(bucket.capacity), level + delta), now)
        members = slot_members(reservation_id, demand.slot_count, kept)
        for slot in demand.slots:
            held = self._slots.get(slot.state_key, {})
            for member in members:
                held.pop(member, None)
        return True

    def _live_leases(self, key: str, now: float) -> dict[str, float]:
        leases = self._slots.setdefault(key, {})
        for rid in [r for r, expiry in leases.items() if expiry <= now]:
            del leases[rid]
        return leases

    async def close(self) -> None:
        return None
