"""Token-bucket arithmetic and the two counter stores (in process, Redis)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from services.auth.counters import MemoryCounters
from services.auth.limiter import (
    Bucket,
    BucketLevel,
    Demand,
    LimitExceeded,
    demand_for,
    refill,
    shortfall_wait,
    tightest,
)
from tests.services_available import REDIS, REDIS_URL, listening


def test_refill_is_linear_and_capped() -> None:
    assert refill(0, 0, 30, 60) == 30  # half a minute refills half the bucket
    assert refill(10, 0, 600, 60) == 60
    assert refill(-20, 0, 10, 60) == -10  # debt is paid back at the same rate


def test_shortfall_wait() -> None:
    assert shortfall_wait(5, 3, 60) == 0
    assert shortfall_wait(0, 1, 60) == pytest.approx(1.0)  # one token a second
    assert shortfall_wait(59, 500, 60) == pytest.approx(1.0)  # oversized: waits for a full bucket


def test_demand_covers_key_and_team_limits() -> None:
    demand = demand_for(
        "k1",
        "t1",
        {"rpm": 10, "max_concurrent": 2},
        {"input_tpm": 1000, "output_tpm": None},
        120,
        50,
    )
    assert {(b.scope, b.limit, b.amount) for b in demand.buckets} == {
        ("key", "rpm", 1),
        ("team", "input_tpm", 120),
    }
    assert [(s.scope, s.capacity) for s in demand.slots] == [("key", 2)]
    assert not demand_for("k1", "t1", {}, {}, 5, 5)


def test_tightest_picks_least_room_by_ratio() -> None:
    a = BucketLevel(Bucket("input_tpm", "key", "k", 1000, 1), 500)
    b = BucketLevel(Bucket("output_tpm", "team", "t", 100, 1), 20)
    assert tightest([a, b], ("input_tpm", "output_tpm")) is b
    assert tightest([a, b], ("rpm",)) is None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    # One loop per test: the Redis client's connections belong to it.
    event_loop = asyncio.new_event_loop()
    yield event_loop
    event_loop.close()


@pytest.fixture(params=["memory", "redis"])
def counters(request: pytest.FixtureRequest, loop: asyncio.AbstractEventLoop) -> Iterator[Any]:
    if request.param == "memory":
        yield MemoryCounters()
        return
    if not listening(REDIS):
        pytest.skip("Redis is not running on 127.0.0.1:6379")
    from services.auth.counters_redis import RedisCounters

    store = RedisCounters(REDIS_URL)
    yield store
    loop.run_until_complete(store.close())


@pytest.fixture
def run(loop: asyncio.AbstractEventLoop) -> Any:
    return loop.run_until_complete


def owner() -> str:
    return uuid.uuid4().hex  # fresh buckets for every test, also in a shared Redis


def test_bucket_admits_its_capacity_then_refuses_with_a_wait(counters: Any, run: Any) -> None:
    demand = demand_for(owner(), "", {"rpm": 3}, {}, 0, 0)

    async def scenario() -> tuple[int, LimitExceeded]:
        admitted = 0
        for _ in range(3):
            await counters.reserve(demand, uuid.uuid4().hex, 60)
            admitted += 1
        with pytest.raises(LimitExceeded) as caught:
            await counters.reserve(demand, uuid.uuid4().hex, 60)
        return admitted, caught.value

    admitted, refused = run(scenario())
    assert admitted == 3
    assert (refused.limit, refused.scope, refused.capacity) == ("rpm", "key", 3)
    assert 0 < refused.retry_after_s <= 20.0  # one token per 20 s


def test_all_or_nothing_across_buckets(counters: Any, run: Any) -> None:
    key, team = owner(), owner()
    demand = demand_for(key, team, {"rpm": 100}, {"input_tpm": 50}, 40, 0)

    async def scenario() -> list[BucketLevel]:
        await counters.reserve(demand, uuid.uuid4().hex, 60)
        with pytest.raises(LimitExceeded) as caught:
            await counters.reserve(demand, uuid.uuid4().hex, 60)  # team tokens run out
        assert caught.value.limit == "input_tpm" and caught.value.scope == "team"
        return await counters.reserve(
            demand_for(key, "", {"rpm": 100}, {}, 0, 0), uuid.uuid4().hex, 60
        )

    levels = run(scenario())
    assert levels[0].tokens == pytest.approx(98, abs=0.1)  # the refused one took nothing


def test_settle_refunds_unused_tokens(counters: Any, run: Any) -> None:
    demand = demand_for(owner(), "", {"output_tpm": 100}, {}, 0, 80)

    async def scenario() -> list[BucketLevel]:
        rid = uuid.uuid4().hex
        await counters.reserve(demand, rid, 60)
        assert await counters.settle(demand, rid, {"output_tpm": 70})  # used 10 of 80
        return await counters.reserve(demand, uuid.uuid4().hex, 60)

    levels = run(scenario())
    assert levels[0].tokens == pytest.approx(100 - 10 - 80, abs=0.5)


def test_concurrency_slots_are_freed_by_settle(counters: Any, run: Any) -> None:
    demand = Demand((), demand_for(owner(), "", {"max_concurrent": 2}, {}, 0, 0).slots)

    async def scenario() -> None:
        first, second = uuid.uuid4().hex, uuid.uuid4().hex
        await counters.reserve(demand, first, 60)
        await counters.reserve(demand, second, 60)
        with pytest.raises(LimitExceeded) as caught:
            await counters.reserve(demand, uuid.uuid4().hex, 60)
        assert caught.value.limit == "max_concurrent"
        await counters.settle(demand, first, {})
        await counters.reserve(demand, uuid.uuid4().hex, 60)

    run(scenario())


def test_memory_slot_lease_expires_and_bucket_refills(run: Any) -> None:
    clock = Clock()
    counters = MemoryCounters(now=clock)
    demand = demand_for(owner(), "", {"rpm": 1, "max_concurrent": 1}, {}, 0, 0)

    async def scenario() -> None:
        await counters.reserve(demand, "a", lease_s=30)
        with pytest.raises(LimitExceeded):
            await counters.reserve(demand, "b", lease_s=30)
        clock.now += 60  # the bucket is full again and the lease has run out
        await counters.reserve(demand, "c", lease_s=30)

    run(scenario())


def test_parallel_reservations_admit_exactly_the_capacity(counters: Any, run: Any) -> None:
    demand = demand_for(owner(), "", {"rpm": 10}, {}, 0, 0)

    async def one() -> bool:
        try:
            await counters.reserve(demand, uuid.uuid4().hex, 60)
        except LimitExceeded:
            return False
        return True

    async def scenario() -> list[bool]:
        return await asyncio.gather(*(one() for _ in range(50)))

    assert sum(run(scenario())) == 10


def test_a_lease_block_is_reserved_whole_and_settled_once(counters: Any, run: Any) -> None:
    """A lease takes many requests, tokens and slots in one atomic step, must fit
    whole, and its settle gives back unused requests and tokens and every slot once."""
    key = owner()
    limits = {"rpm": 100, "output_tpm": 1000, "max_concurrent": 10}
    block = demand_for(key, "", limits, {}, 0, 400, requests=40, slots=6)
    one = demand_for(key, "", limits, {}, 0, 0)

    async def scenario() -> list[BucketLevel]:
        lease = uuid.uuid4().hex
        levels = await counters.reserve(block, lease, 60)
        assert {lv.bucket.limit: round(lv.tokens) for lv in levels} == {
            "rpm": 60,
            "output_tpm": 600,
        }
        # 6 of 10 slots are the lease's: a second block of 6 does not fit, and took nothing.
        with pytest.raises(LimitExceeded) as caught:
            await counters.reserve(block, uuid.uuid4().hex, 60)
        assert caught.value.limit == "max_concurrent"
        singles = [uuid.uuid4().hex for _ in range(4)]
        for rid in singles:
            await counters.reserve(one, rid, 60)
        with pytest.raises(LimitExceeded):
            await counters.reserve(one, uuid.uuid4().hex, 60)  # 6 + 4 slots held
        for rid in singles:
            await counters.settle(one, rid, {})
        # A block must fit whole: 56 requests left, a block of 57 is refused.
        big = demand_for(key, "", {"rpm": 100}, {}, 0, 0, requests=57)
        with pytest.raises(LimitExceeded) as caught:
            await counters.reserve(big, uuid.uuid4().hex, 60)
        assert caught.value.limit == "rpm"
        # The lease admitted 15 requests that used 100 output tokens.
        assert await counters.settle(block, lease, {"rpm": 40 - 15, "output_tpm": 400 - 100})
        assert not await counters.settle(block, lease, {"rpm": 25, "output_tpm": 300})
        # Its 6 slots are free again: a new block of 6 plus 4 singles fit.
        return await counters.reserve(block, uuid.uuid4().hex, 60)

    levels = run(scenario())
    # rpm: 100 - 40 - 4 + 25 - 40; output: 1000 - 400 + 300 - 400 (refills add a little).
    assert {lv.bucket.limit: lv.tokens for lv in levels} == {
        "rpm": pytest.approx(41, abs=0.5),
        "output_tpm": pytest.approx(500, abs=1),
    }


def test_a_lease_settle_frees_all_its_slot_entries_in_redis(run: Any) -> None:
    if not listening(REDIS):
        pytest.skip("Redis is not running on 127.0.0.1:6379")
    from services.auth.counters_redis import RedisCounters

    store = RedisCounters(REDIS_URL)
    demand = demand_for(
        owner(), owner(), {"max_concurrent": 3000}, {"max_concurrent": 5000}, 0, 0, 20, 2500
    )

    async def scenario() -> tuple[list[int], list[int]]:
        rid = uuid.uuid4().hex
        await store.reserve(demand, rid, 60)
        held = [await store.redis.zcard(s.state_key) for s in demand.slots]
        await store.settle(demand, rid, {"rpm": 20})
        left = [await store.redis.zcard(s.state_key) for s in demand.slots]
        await store.close()
        return held, left

    held, left = run(scenario())
    assert held == [2500, 2500]  # key and team: every slot of the block, in both
    assert left == [0, 0]


def test_a_block_larger_than_a_bucket_is_refused_even_when_full(counters: Any, run: Any) -> None:
    demand = demand_for(owner(), "", {"rpm": 10}, {}, 0, 0, requests=11)
    with pytest.raises(LimitExceeded):
        run(counters.reserve(demand, uuid.uuid4().hex, 60))


def test_a_lease_settle_keeps_the_slots_of_running_requests_until_they_settle(
    counters: Any, run: Any
) -> None:
    """A lease settled while two of its requests run frees its other slots; each of
    those two frees its own entry later as the one-request reservation `<id>:<i>`."""
    key = owner()
    limits = {"max_concurrent": 4, "input_tpm": 1000}
    lease = uuid.uuid4().hex
    block = demand_for(key, "", limits, {}, 400, 0, requests=10, slots=4)
    one = demand_for(key, "", limits, {}, 0, 0)

    async def fits() -> int:
        """How many single requests fit now (then given back)."""
        taken = []
        try:
            for _ in range(5):
                rid = uuid.uuid4().hex
                await counters.reserve(one, rid, 60)
                taken.append(rid)
        except LimitExceeded:
            pass
        for rid in taken:
            await counters.settle(one, rid, {})
        return len(taken)

    async def scenario() -> list[int]:
        await counters.reserve(block, lease, 60)
        found = [await fits()]
        # Admitted 3; one ended using 10 tokens, two run holding 100 reserved each.
        await counters.settle(block, lease, {"input_tpm": 400 - 210}, frozenset({1, 3}))
        found.append(await fits())
        running = demand_for(key, "", limits, {}, 100, 0)
        assert await counters.settle(running, f"{lease}:1", {"input_tpm": 100 - 40})
        assert not await counters.settle(running, f"{lease}:1", {"input_tpm": 60})
        found.append(await fits())
        await counters.settle(running, f"{lease}:3", {"input_tpm": 100 - 100})
        found.append(await fits())
        return found

    assert run(scenario()) == [0, 2, 3, 4]
