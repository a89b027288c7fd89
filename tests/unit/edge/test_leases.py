"""The lease book: what a lease admits, when it retires, what its settle says;
and the limiter admitting from leases (one auth call for many requests)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from aqueduct.auth.v1 import auth_pb2 as pb
from grpc.aio import AioRpcError, Metadata

from edge.leases import LeaseBook, Plan, book_key, plan_for
from edge.limits import Limiter, Usage

BIG = pb.Principal(
    key_id="k",
    team="t",
    limits=pb.Limits(rpm=1000, input_tpm=100_000, output_tpm=100_000, max_concurrent=500),
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def granted(requests: int, input_tokens: int, output_tokens: int, slots: int) -> Any:
    return pb.ReserveQuotaResponse(
        reservation=pb.Reservation(
            id="lease-1",
            key_id="k",
            team="t",
            requests=requests,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            slots=slots,
        ),
        requests=pb.RateLimitStatus(limited=True, limit=1000, remaining=980, reset_s=1.2),
    )


def book(clock: Clock | None = None) -> tuple[LeaseBook, list[pb.Settlement]]:
    settled: list[pb.Settlement] = []
    return LeaseBook(settled.append, now=clock or Clock(), retire_s=1.0), settled


def test_plan_leases_a_fiftieth_of_each_limit_only_when_large_enough() -> None:
    assert plan_for(BIG, 100, 200) == Plan(20, 2000, 2000, 10)
    team = pb.Principal(
        key_id="k", team="t", limits=BIG.limits, team_limits=pb.Limits(max_concurrent=450)
    )
    assert plan_for(team, 100, 200) == Plan(20, 2000, 2000, 9)  # the team's is tighter
    only_tokens = pb.Principal(key_id="k", limits=pb.Limits(output_tpm=1_000_000))
    assert plan_for(only_tokens, 10, 512) == Plan(100_000, None, 20_000, None)
    small = [
        pb.Limits(rpm=5),
        pb.Limits(max_concurrent=1),
        pb.Limits(rpm=1000, max_concurrent=100),  # 2 slots: too few
        pb.Limits(rpm=399),
    ]
    for limits in small:
        assert plan_for(pb.Principal(key_id="k", limits=limits), 1, 1) is None
    # A request whose tokens are more than 1/8 of the block reserves on its own.
    assert plan_for(BIG, 251, 10) is None
    assert plan_for(BIG, 250, 250) is not None
    # A changed limit is another lease.
    changed = pb.Principal(key_id="k", team="t", limits=pb.Limits(rpm=2000))
    assert book_key(changed) != book_key(BIG)


def test_a_lease_never_admits_beyond_its_block_and_settles_exact_numbers() -> None:
    leases, settled = book()
    key = book_key(BIG)
    assert leases.take(key, 1, 1) is None  # nothing open yet
    leases.open(key, granted(5, 100, 1000, 8), Plan(5, 100, 1000, 8))
    taken = [leases.take(key, 10, 50) for _ in range(5)]
    assert all(t is not None for t in taken)
    actual = [(8, 20), (10, 50), (0, 0), (12, 70), (9, 1)]
    for t, (used_in, used_out) in zip(taken[:2], actual, strict=False):
        assert t is not None
        leases.release(t, used_in, used_out)
    assert settled == []  # open: nothing settles yet
    assert leases.take(key, 10, 50) is None  # 5 requests: the sixth retires it
    # The lease settles at once: 5 admitted; two ended (their actual tokens), three
    # still running keep their slot entries and count their reserved tokens.
    (lease,) = settled
    assert lease.reservation.id == "lease-1" and lease.part == pb.SETTLE_PART_LIMITS
    assert lease.admitted_requests == 5
    assert (lease.usage.input_tokens, lease.usage.output_tokens) == (18 + 30, 70 + 150)
    running = [t for t in taken[2:] if t is not None]
    assert sorted(lease.kept_slots) == sorted(t.index for t in running)
    # Each running request then settles its own share: its slot entry, its tokens.
    for t, (used_in, used_out) in zip(running, actual[2:], strict=True):
        leases.release(t, used_in, used_out)
        leases.release(t, used_in, used_out)  # twice: counted once
    own = settled[1:]
    assert [s.reservation.id for s in own] == [f"lease-1:{t.index}" for t in running]
    assert [
        (s.reservation.input_tokens, s.usage.input_tokens, s.usage.output_tokens) for s in own
    ] == [(10, 0, 0), (10, 12, 70), (10, 9, 1)]
    assert all(s.reservation.requests in (0, 1) and s.reservation.slots in (0, 1) for s in own)
    assert leases.open_leases == 0


def test_tokens_and_slots_bound_a_lease_and_come_back_when_requests_end() -> None:
    leases, settled = book()
    key = book_key(BIG)
    leases.open(key, granted(100, 100, 10_000, 2), Plan(100, 100, 10_000, 2))
    first, second = leases.take(key, 30, 10), leases.take(key, 30, 10)
    assert first is not None and second is not None
    assert {first.index, second.index} == {0, 1}  # two slot entries, one each
    leases.release(first, 5, 3)
    third = leases.take(key, 30, 10)  # the freed slot is used again
    assert third is not None and third.index == first.index
    # Both slots are in flight: the next request does not fit, and the lease retires.
    assert leases.take(key, 30, 10) is None
    assert settled[0].admitted_requests == 3
    assert sorted(settled[0].kept_slots) == [0, 1]
    assert (settled[0].usage.input_tokens, settled[0].usage.output_tokens) == (65, 23)

    # Input tokens: 100 in the block, 30 each reserved; unused ones come back.
    leases.open(key, granted(100, 100, 10_000, 8), Plan(100, 100, 10_000, 8))
    held = [leases.take(key, 30, 10) for _ in range(3)]
    assert held[0] is not None and all(held)
    leases.release(held[0], 0, 0)  # used none of its 30: room for one more
    assert leases.take(key, 30, 10) is not None
    assert leases.take(key, 30, 10) is None  # 10 left


def test_a_lease_retires_after_its_time_with_an_injected_clock() -> None:
    clock = Clock()
    leases, settled = book(clock)
    key = book_key(BIG)
    leases.open(key, granted(50, 1000, 1000, 8), Plan(50, 1000, 1000, 8))
    running = leases.take(key, 1, 1)
    assert running is not None
    clock.now += 0.99
    assert leases.take(key, 1, 1) is not None
    assert settled == []
    clock.now += 0.02  # 1.01 s old: no more admissions, and it settles
    assert leases.take(key, 1, 1) is None
    assert [(s.admitted_requests, len(s.kept_slots)) for s in settled] == [(2, 2)]
    assert leases.open_leases == 0


def test_an_idle_lease_settles_by_its_timer_and_at_shutdown() -> None:
    async def scenario() -> tuple[list[pb.Settlement], list[pb.Settlement]]:
        settled: list[pb.Settlement] = []
        leases = LeaseBook(settled.append, retire_s=0.05)
        key = book_key(BIG)
        leases.open(key, granted(50, 1000, 1000, 8), Plan(50, 1000, 1000, 8))
        done = leases.take(key, 7, 9)
        assert done is not None
        leases.release(done, 5, 5)
        await asyncio.sleep(0.1)  # nobody takes again: the timer retires it
        by_timer = list(settled)
        settled.clear()
        leases.open(key, granted(50, 1000, 1000, 8), Plan(50, 1000, 1000, 8))
        running = leases.take(key, 7, 9)
        assert running is not None
        leases.retire_all()  # shutdown with a request in flight
        leases.release(running, 1, 1)  # it ends later and settles its own share
        return by_timer, settled

    by_timer, at_shutdown = asyncio.run(scenario())
    assert [(s.admitted_requests, s.usage.input_tokens, list(s.kept_slots)) for s in by_timer] == [
        (1, 5, [])
    ]
    assert [
        (s.reservation.id, s.usage.input_tokens, s.usage.output_tokens) for s in at_shutdown
    ] == [("lease-1", 7, 9), ("lease-1:0", 1, 1)]


class LeasingAuth:
    """Grants what it is asked (or refuses blocks, or is too old to lease)."""

    def __init__(self, refuse_blocks: bool = False, old: bool = False) -> None:
        self.reserves: list[pb.ReserveQuotaRequest] = []
        self.settles: list[pb.Settlement] = []
        self.refuse_blocks = refuse_blocks
        self.old = old

    async def SettleAndReserveQuota(
        self, request: pb.SettleAndReserveQuotaRequest, **_: Any
    ) -> pb.SettleAndReserveQuotaResponse:
        self.settles.extend(request.settles)
        await asyncio.sleep(0.005)  # a round trip, while more requests arrive
        self.reserves.append(request.reserve)
        ask = request.reserve
        if self.refuse_blocks and ask.requests > 1:
            raise AioRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, Metadata(), Metadata(), "no")
        reservation = pb.Reservation(
            id=f"r{len(self.reserves)}",
            key_id=ask.key_id,
            team=ask.team,
            input_tokens=ask.input_tokens,
            output_tokens=ask.output_tokens,
        )
        if not self.old:
            reservation.requests, reservation.slots = ask.requests, ask.slots
        return pb.SettleAndReserveQuotaResponse(
            reserved=pb.ReserveQuotaResponse(reservation=reservation)
        )

    async def SettleQuotas(self, request: pb.SettleQuotasRequest, **_: Any) -> Any:
        self.settles.extend(request.settles)
        return pb.SettleQuotasResponse()


def test_concurrent_requests_share_one_lease_call_and_settle_their_rows() -> None:
    auth = LeasingAuth()

    async def scenario() -> Limiter:
        limiter = Limiter(auth, default_output_tokens=64)  # type: ignore[arg-type]
        admissions = await asyncio.gather(
            *(limiter.reserve(BIG, 10, 20, f"q{i}") for i in range(15))
        )
        assert len({a.reservation.id for a in admissions}) == 15  # a ledger row id each
        for i, admission in enumerate(admissions):
            limiter.settle(admission, Usage(f"q{i}", "m", False, "", input_tokens=10))
        await limiter.drain()
        return limiter

    limiter = asyncio.run(scenario())
    # 15 requests at once, two auth calls: a lease holds 10 slots (500 / 50), and the
    # eleventh request to arrive, finding them all in flight, leased the next block.
    assert len(auth.reserves) == 2
    assert (auth.reserves[0].requests, auth.reserves[0].slots) == (20, 10)
    assert limiter.admissions == {"leased": 15, "per_request": 0, "unlimited": 0}
    rows = [s for s in auth.settles if s.part == pb.SETTLE_PART_LEDGER]
    assert sorted(s.usage.request_id for s in rows) == sorted(f"q{i}" for i in range(15))
    limits = {s.reservation.id: s for s in auth.settles if s.part == pb.SETTLE_PART_LIMITS}
    # r1 retired with its 10 requests running: each settled its own slot entry then;
    # r2 settled at the drain, its 5 requests ended.
    assert (limits["r1"].admitted_requests, sorted(limits["r1"].kept_slots)) == (
        10,
        list(range(10)),
    )
    assert [limits[f"r1:{i}"].usage.input_tokens for i in range(10)] == [10] * 10
    assert (limits["r2"].admitted_requests, limits["r2"].usage.input_tokens) == (5, 50)
    assert len(limits) == 12


def test_a_refused_lease_falls_back_to_reserving_per_request() -> None:
    auth = LeasingAuth(refuse_blocks=True)

    async def scenario() -> Limiter:
        limiter = Limiter(auth, default_output_tokens=64)  # type: ignore[arg-type]
        for i in range(3):
            await limiter.reserve(BIG, 10, 20, f"q{i}")
        return limiter

    limiter = asyncio.run(scenario())
    assert [r.requests for r in auth.reserves] == [20, 0, 0, 0]  # then no lease asked for a while
    assert limiter.admissions["per_request"] == 3


def test_an_auth_older_than_leases_turns_them_off_and_gets_its_block_back() -> None:
    auth = LeasingAuth(old=True)

    async def scenario() -> Limiter:
        limiter = Limiter(auth, default_output_tokens=64)  # type: ignore[arg-type]
        for i in range(2):
            await limiter.reserve(BIG, 10, 20, f"q{i}")
        await limiter.drain()
        return limiter

    limiter = asyncio.run(scenario())
    assert not limiter.leasing
    assert [r.requests for r in auth.reserves] == [20, 0, 0]
    assert limiter.admissions == {"leased": 0, "per_request": 2, "unlimited": 0}
    back = [s for s in auth.settles if s.reservation.id == "r1"]
    assert len(back) == 1 and back[0].usage.input_tokens == 0  # every token returned


def test_leases_off_reserves_every_request() -> None:
    auth = LeasingAuth()

    async def scenario() -> None:
        limiter = Limiter(auth, default_output_tokens=64, leases=False)  # type: ignore[arg-type]
        for i in range(3):
            await limiter.reserve(BIG, 10, 20, f"q{i}")

    asyncio.run(scenario())
    assert [r.requests for r in auth.reserves] == [0, 0, 0]


@pytest.mark.parametrize("limits", [pb.Limits(rpm=5), pb.Limits(rpm=100_000, max_concurrent=1)])
def test_small_limits_reserve_per_request(limits: pb.Limits) -> None:
    auth = LeasingAuth()
    principal = pb.Principal(key_id="s", limits=limits)

    async def scenario() -> None:
        limiter = Limiter(auth, default_output_tokens=64)  # type: ignore[arg-type]
        for i in range(3):
            await limiter.reserve(principal, 1, 1, f"q{i}")

    asyncio.run(scenario())
    assert [r.requests for r in auth.reserves] == [0, 0, 0]


@pytest.mark.parametrize(
    ("value", "on"), [(None, True), ("on", True), ("1", True), ("0", False), ("off", False)]
)
def test_the_operator_switch(monkeypatch: pytest.MonkeyPatch, value: str | None, on: bool) -> None:
    from edge.config import Settings

    if value is None:
        monkeypatch.delenv("AQUEDUCT_LIMIT_LEASES", raising=False)
    else:
        monkeypatch.setenv("AQUEDUCT_LIMIT_LEASES", value)
    assert Settings.from_env().limit_leases is on
