"""The edge's limiter: local admission for unlimited keys, batched and retried settles."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from aqueduct.auth.v1 import auth_pb2 as pb
from grpc.aio import AioRpcError, Metadata

from core import settles
from edge import limits
from edge.errors import NO_LIMIT, UNLIMITED_RATE_HEADERS, ApiError
from edge.limits import LEDGER_BATCH_S, Admission, Limiter, Usage


class FakeAuth:
    """Stands in for the auth stub: records calls, can fail the first settles."""

    def __init__(self, failures: int = 0, ride_error: grpc.StatusCode | None = None) -> None:
        self.reserves: list[pb.ReserveQuotaRequest] = []
        self.batches: list[list[str]] = []  # ledger rows, by call
        self.limit_batches: list[list[str]] = []  # limits given back, by SettleQuotas call
        self.rides: list[list[str]] = []  # limits given back on a reservation, by call
        self.failures = failures
        self.ride_error = ride_error  # SettleAndReserveQuota fails with it, settling nothing

    async def SettleAndReserveQuota(
        self, request: pb.SettleAndReserveQuotaRequest, **_: Any
    ) -> pb.SettleAndReserveQuotaResponse:
        if self.ride_error is not None:
            raise AioRpcError(self.ride_error, Metadata(), Metadata(), "no")
        self.rides.append([s.usage.request_id for s in request.settles])
        return pb.SettleAndReserveQuotaResponse(reserved=await self.ReserveQuota(request.reserve))

    async def ReserveQuota(
        self, request: pb.ReserveQuotaRequest, **_: Any
    ) -> pb.ReserveQuotaResponse:
        self.reserves.append(request)
        return pb.ReserveQuotaResponse(
            reservation=pb.Reservation(id="r-limited"),
            requests=pb.RateLimitStatus(limited=True, limit=10, remaining=9, reset_s=6),
        )

    async def SettleQuotas(
        self, request: pb.SettleQuotasRequest, **_: Any
    ) -> pb.SettleQuotasResponse:
        await asyncio.sleep(0.01)  # a round trip, while more settles queue up
        if self.failures:
            self.failures -= 1
            raise AioRpcError(grpc.StatusCode.UNAVAILABLE, Metadata(), Metadata(), "down")
        for part, batches in (
            (pb.SETTLE_PART_LEDGER, self.batches),
            (pb.SETTLE_PART_LIMITS, self.limit_batches),
        ):
            if ids := [s.usage.request_id for s in request.settles if s.part == part]:
                batches.append(ids)
        return pb.SettleQuotasResponse()


FREE = pb.Principal(key_id="k1", team="t")
LIMITED = pb.Principal(key_id="k2", team="t", limits=pb.Limits(rpm=10))


def test_keys_without_limits_are_admitted_without_asking_auth() -> None:
    auth = FakeAuth()

    async def scenario() -> None:
        limiter = Limiter(auth, default_output_tokens=64)  # type: ignore[arg-type]
        admission = await limiter.reserve(FREE, 10, None, "rid")
        assert admission.reservation.output_tokens == 64
        # All six headers on every answer (as OpenAI sends them), saying "no limit".
        assert admission.headers == UNLIMITED_RATE_HEADERS
        assert admission.headers["x-ratelimit-remaining-tokens"] == str(2**31 - 1)
        limited = await limiter.reserve(LIMITED, 10, 5, "rid")
        assert limited.headers["x-ratelimit-limit-requests"] == "10"
        assert limited.headers["x-ratelimit-limit-tokens"] == NO_LIMIT  # rpm only

    asyncio.run(scenario())
    assert [r.key_id for r in auth.reserves] == ["k2"]


def test_settles_queue_while_one_call_is_in_flight_and_all_arrive() -> None:
    auth = FakeAuth()

    async def scenario() -> None:
        limiter = Limiter(auth, default_output_tokens=64)  # type: ignore[arg-type]
        admission = await limiter.reserve(LIMITED, 10, 5, "rid")
        for i in range(5):
            limiter.settle(admission, Usage(f"r{i}", "m", False, ""))
            await asyncio.sleep(0.004)
        await limiter.drain()

    asyncio.run(scenario())
    every = [f"r{i}" for i in range(5)]
    assert [rid for batch in auth.limit_batches for rid in batch] == every
    assert len(auth.limit_batches) < 5  # later settles rode along with earlier calls
    # The rows waited to share one call (and so one commit in auth).
    assert auth.batches == [every]


def test_ledger_rows_go_in_one_call_per_batch_wait_not_one_per_round_trip() -> None:
    """Under steady traffic the rows of 50 ms share a call (auth's cost is per call),
    while a limits settle still goes as soon as it may."""
    auth = FakeAuth()

    async def scenario() -> None:
        limiter = Limiter(auth, default_output_tokens=64)  # type: ignore[arg-type]
        admission = await limiter.reserve(FREE, 10, 5, "rid")
        started = asyncio.get_running_loop().time()
        for i in range(150):  # a row every 2 ms for 0.3 s; a call takes 10 ms
            limiter.settle(admission, Usage(f"r{i}", "m", False, ""))
            await asyncio.sleep(0.002)
        elapsed = asyncio.get_running_loop().time() - started
        await limiter.drain()
        assert len(auth.batches) <= elapsed / LEDGER_BATCH_S + 2  # ~7, not ~30

    asyncio.run(scenario())
    assert [rid for batch in auth.batches for rid in batch] == [f"r{i}" for i in range(150)]


def test_a_limits_settle_rides_on_the_next_reservation_instead_of_a_call_of_its_own() -> None:
    auth = FakeAuth()

    async def scenario() -> None:
        limiter = Limiter(auth, default_output_tokens=64)  # type: ignore[arg-type]
        limiter.settle(await limiter.reserve(LIMITED, 10, 5, "a"), Usage("a", "m", False, ""))
        limiter.settle(await limiter.reserve(LIMITED, 10, 5, "b"), Usage("b", "m", False, ""))
        await limiter.drain()

    asyncio.run(scenario())
    assert auth.rides == [[], ["a"]]
    assert auth.limit_batches == [["b"]]  # nothing came to carry the last one
    assert auth.batches == [["a", "b"]]


def test_a_limits_settle_goes_on_its_own_soon_when_no_reservation_comes() -> None:
    auth = FakeAuth()

    async def scenario() -> None:
        limiter = Limiter(auth, default_output_tokens=64)  # type: ignore[arg-type]
        limiter.settle(await limiter.reserve(LIMITED, 10, 5, "a"), Usage("a", "m", False, ""))
        await asyncio.sleep(limits.RIDE_S + 0.05)  # the call's round trip is 10 ms
        assert auth.limit_batches == [["a"]]
        await limiter.drain()

    asyncio.run(scenario())


def test_settles_on_a_failed_reservation_are_delivered_by_the_queue() -> None:
    auth = FakeAuth(ride_error=grpc.StatusCode.UNAVAILABLE)

    async def scenario() -> None:
        limiter = Limiter(auth, default_output_tokens=64)  # type: ignore[arg-type]
        limiter.settle(await _reserve_old(limiter, auth), Usage("a", "m", False, ""))
        with pytest.raises(ApiError) as refused:
            await limiter.reserve(LIMITED, 10, 5, "b")
        assert refused.value.status == 503
        await limiter.drain()

    asyncio.run(scenario())
    assert auth.limit_batches == [["a"]]


def test_an_auth_older_than_settle_and_reserve_gets_separate_calls_and_loses_nothing() -> None:
    auth = FakeAuth(ride_error=grpc.StatusCode.UNIMPLEMENTED)

    async def scenario() -> None:
        limiter = Limiter(auth, default_output_tokens=64)  # type: ignore[arg-type]
        for rid in ("a", "b", "c"):
            limiter.settle(await limiter.reserve(LIMITED, 10, 5, rid), Usage(rid, "m", False, ""))
        assert not limiter.riding
        await limiter.drain()

    asyncio.run(scenario())
    assert [r.request_id for r in auth.reserves] == ["a", "b", "c"]
    assert [rid for batch in auth.limit_batches for rid in batch] == ["a", "b", "c"]


async def _reserve_old(limiter: Limiter, auth: FakeAuth) -> Admission:
    """A reservation made while auth still answered SettleAndReserveQuota."""
    failing, auth.ride_error = auth.ride_error, None
    try:
        return await limiter.reserve(LIMITED, 10, 5, "a")
    finally:
        auth.ride_error = failing


def test_a_key_without_limits_sends_only_its_ledger_row() -> None:
    auth = FakeAuth()

    async def scenario() -> None:
        limiter = Limiter(auth, default_output_tokens=64)  # type: ignore[arg-type]
        limiter.settle(await limiter.reserve(FREE, 1, 1, "x"), Usage("free", "m", False, ""))
        await limiter.drain()

    asyncio.run(scenario())
    assert (auth.batches, auth.limit_batches) == ([["free"]], [])


def test_a_failed_settle_is_retried_and_nothing_is_lost(monkeypatch: Any) -> None:
    auth = FakeAuth(failures=2)
    monkeypatch.setattr(settles.asyncio, "sleep", _no_wait(asyncio.sleep))

    async def scenario() -> None:
        limiter = Limiter(auth, default_output_tokens=64)  # type: ignore[arg-type]
        limiter.settle((await limiter.reserve(FREE, 1, 1, "x")), Usage("only", "m", False, ""))
        await limiter.drain()

    asyncio.run(scenario())
    assert auth.batches == [["only"]]


def _no_wait(sleep: Any) -> Any:
    async def quick(seconds: float) -> None:
        await sleep(min(seconds, 0.01))

    return quick


def test_settles_are_kept_through_an_outage_and_delivered_in_order_when_auth_is_back(
    monkeypatch: Any, caplog: Any
) -> None:
    """A settle is never given up while the edge runs: its ledger row and the
    limits it gives back arrive once auth answers again."""
    auth = FakeAuth(failures=30)  # far more tries than the old limit of three
    monkeypatch.setattr(settles.asyncio, "sleep", _no_wait(asyncio.sleep))

    async def scenario() -> None:
        limiter = Limiter(auth, default_output_tokens=64)  # type: ignore[arg-type]
        admission = await limiter.reserve(LIMITED, 1, 1, "x")
        limiter.settle(admission, Usage("first", "m", False, ""))
        await asyncio.sleep(0.05)
        limiter.settle(admission, Usage("second", "m", False, ""))
        await limiter.drain(timeout=30)
        assert limiter.settles_pending == 0

    with caplog.at_level("WARNING", logger="core.settles"):
        asyncio.run(scenario())
    assert auth.failures == 0
    for batches in (auth.batches, auth.limit_batches):
        assert [rid for batch in batches for rid in batch] == ["first", "second"]
    warnings = [r for r in caplog.records if "settles failing" in r.getMessage()]
    assert len(warnings) == 2  # once per outage and queue (limits, rows), not once per try


def test_settles_held_during_an_outage_are_bounded_oldest_dropped_first(
    monkeypatch: Any, caplog: Any
) -> None:
    auth = FakeAuth(failures=1_000_000)
    monkeypatch.setattr(settles, "MAX_PENDING", 5)
    monkeypatch.setattr(settles.asyncio, "sleep", _no_wait(asyncio.sleep))

    async def scenario() -> None:
        limiter = Limiter(auth, default_output_tokens=64)  # type: ignore[arg-type]
        admission = await limiter.reserve(LIMITED, 1, 1, "x")
        for i in range(8):
            limiter.settle(admission, Usage(f"r{i}", "m", False, ""))
            await asyncio.sleep(0.02)
        for _ in range(200):  # a failing send may be in flight: its outcome applies the bound
            if limiter.settles_pending == 10:
                break
            await asyncio.sleep(0.005)
        # Each queue (limits, rows) kept its newest five.
        assert limiter.settles_pending == 10 and limiter.settles_dropped == 6
        auth.failures = 0
        await limiter.drain(timeout=10)

    with caplog.at_level("ERROR", logger="core.settles"):
        asyncio.run(scenario())
    for batches in (auth.batches, auth.limit_batches):
        assert sorted(rid for batch in batches for rid in batch) == [f"r{i}" for i in range(3, 8)]
    assert any("settles dropped" in r.getMessage() for r in caplog.records)
