"""Quotas.settle: done only when counters and ledger row are committed; a retry
after any failure has exactly one effect."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import redis.exceptions

from core.errors import Kind, ServiceError
from services.auth.counters import MemoryCounters
from services.auth.dependencies import redis_dependency
from services.auth.keys import Limits
from services.auth.ledger import UsageLedger
from services.auth.quotas import ADMITTED, MAX_LEASE_SLOTS, Part, Quotas
from services.auth.store import KeyStore


def usage() -> dict[str, Any]:
    return {
        "request_id": "same-client-id",  # not unique: the reservation id is
        "key_id": "k",
        "team": "t",
        "model": "m",
        "input_tokens": 1,
        "output_tokens": 1,
        "latency_ms": 1,
        "ttft_ms": 0,
        "status": 200,
        "error_code": "",
        "user": "",
        "stream": False,
        "created_at": time.time(),
    }


class FlakyCounters(MemoryCounters):
    """Its settles fail while `down` (Redis stopped)."""

    down = False

    async def settle(self, *args: Any) -> bool:
        if self.down:
            raise redis.exceptions.ConnectionError("Connection refused")
        return await super().settle(*args)


def test_a_settle_that_failed_is_completed_by_its_retry_once(tmp_path: Path) -> None:
    store = KeyStore(f"sqlite:///{tmp_path / 'q.db'}")
    store.migrate()
    counters = FlakyCounters()
    quotas = Quotas(counters, UsageLedger(store, 30), 3600, redis_dependency())

    async def scenario() -> None:
        one = Limits(max_concurrent=1)
        first = await quotas.reserve("k", "t", one, Limits(), 1, 1)
        other = await quotas.reserve("k2", "t", Limits(), Limits(), 1, 1)  # no limits
        settles = [(first.reservation, usage(), Part.BOTH), (other.reservation, usage(), Part.BOTH)]
        counters.down = True
        with pytest.raises(ServiceError) as refused:
            await quotas.settle(settles)
        assert (refused.value.kind, refused.value.reason) == (
            Kind.UNAVAILABLE,
            "LIMITS_UNAVAILABLE",
        )
        with pytest.raises(ServiceError):  # the slot is still held
            await quotas.reserve("k", "t", one, Limits(), 1, 1)
        counters.down = False
        await quotas.settle(settles)  # the edge's retry
        await quotas.settle(settles)  # and once more, as after a lost answer
        await quotas.reserve("k", "t", one, Limits(), 1, 1)  # the slot is back

    asyncio.run(scenario())
    assert store.usage_totals({}, None)[0]["requests"] == 2


def test_parts_sent_apart_each_take_effect_once(tmp_path: Path) -> None:
    """The edge gives limits back at once and sends the ledger row later, in a
    batch: the limits part frees the slot without a row, the ledger part writes
    the row without touching the counters, and a resent part changes nothing."""
    store = KeyStore(f"sqlite:///{tmp_path / 'q.db'}")
    store.migrate()
    quotas = Quotas(FlakyCounters(), UsageLedger(store, 30), 3600, redis_dependency())

    async def scenario() -> None:
        one = Limits(max_concurrent=1)
        first = await quotas.reserve("k", "t", one, Limits(), 1, 1)
        limits_part = [(first.reservation, usage(), Part.LIMITS)]
        await quotas.settle(limits_part)
        await quotas.settle(limits_part)
        assert store.usage_totals({}, None)[0]["requests"] == 0
        second = await quotas.reserve("k", "t", one, Limits(), 1, 1)  # the slot is back
        with pytest.raises(ServiceError):  # and the resent part did not free another
            await quotas.reserve("k", "t", one, Limits(), 1, 1)
        ledger_part = [(first.reservation, usage(), Part.LEDGER)]
        await quotas.settle(ledger_part)
        await quotas.settle(ledger_part)
        with pytest.raises(ServiceError):  # the row did not give the slot back again
            await quotas.reserve("k", "t", one, Limits(), 1, 1)
        await quotas.settle([(second.reservation, usage(), Part.BOTH)])

    asyncio.run(scenario())
    assert store.usage_totals({}, None)[0]["requests"] == 2


def test_a_lease_settle_gives_back_the_requests_it_did_not_admit(tmp_path: Path) -> None:
    """A lease of 10 requests that admitted 3 gives 7 back to rpm (a request's
    settle gives none back); tokens go back to the admitted requests' sums."""
    store = KeyStore(f"sqlite:///{tmp_path / 'q.db'}")
    store.migrate()
    quotas = Quotas(MemoryCounters(), UsageLedger(store, 30), 3600, redis_dependency())
    limits = Limits(rpm=20, input_tpm=1000, max_concurrent=4)

    async def scenario() -> list[int]:
        lease = await quotas.reserve("k", "t", limits, Limits(), 500, 0, requests=10, slots=3)
        assert (lease.reservation.requests, lease.reservation.slots) == (10, 3)
        with pytest.raises(ServiceError):  # 3 of 4 slots are the lease's
            await quotas.reserve("k", "t", limits, Limits(), 0, 0, requests=2, slots=2)
        used = usage() | {"input_tokens": 120, ADMITTED: 3}
        await quotas.settle([(lease.reservation, used, Part.LIMITS)])
        await quotas.settle([(lease.reservation, used, Part.LIMITS)])  # resent: no effect
        after = await quotas.reserve("k", "t", limits, Limits(), 0, 0, requests=4, slots=4)
        assert after.requests is not None and after.tokens is not None
        return [round(after.requests.tokens), round(after.tokens.tokens)]

    # rpm 20 - 10 + 7 - 4; input 1000 - 500 + 380.
    assert asyncio.run(scenario()) == [13, 880]
    assert store.usage_totals({}, None)[0]["requests"] == 0  # limits part: no ledger row


def test_a_lease_larger_than_allowed_is_a_bad_request(tmp_path: Path) -> None:
    store = KeyStore(f"sqlite:///{tmp_path / 'q.db'}")
    quotas = Quotas(MemoryCounters(), UsageLedger(store, 30), 3600, redis_dependency())
    with pytest.raises(ServiceError) as refused:
        asyncio.run(quotas.reserve("k", "", Limits(), Limits(), 0, 0, slots=MAX_LEASE_SLOTS + 1))
    assert (refused.value.kind, refused.value.param) == (Kind.INVALID_ARGUMENT, "slots")
