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
from services.auth.quotas import Part, Quotas
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
