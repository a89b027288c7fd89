"""Metering of key-bearing internal callers: one settle however the call ends,
auth's refusals passed on, nothing settled for a request auth never admitted."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from aqueduct.auth.v1 import auth_pb2 as pb

from core.errors import Kind, ServiceError
from core.settles import SettleQueue
from services.inference.metering import Metering

LIMITED = pb.Principal(key_id="key_l", team="t", limits=pb.Limits(rpm=5))
UNLIMITED = pb.Principal(key_id="key_u", team="t")


class FakeAuth:
    def __init__(self, refuse: grpc.aio.AioRpcError | None = None) -> None:
        self.refuse = refuse
        self.reserved: list[pb.ReserveQuotaRequest] = []
        self.settled: list[pb.Settlement] = []

    async def ReserveQuota(self, request: pb.ReserveQuotaRequest, **_: Any) -> Any:
        self.reserved.append(request)
        if self.refuse is not None:
            raise self.refuse
        return pb.ReserveQuotaResponse(reservation=pb.Reservation(id="r1", key_id=request.key_id))

    async def SettleQuotas(self, request: pb.SettleQuotasRequest, **_: Any) -> Any:
        self.settled.extend(request.settles)
        return pb.SettleQuotasResponse()


def metering(auth: FakeAuth) -> Metering:
    meter = Metering.__new__(Metering)
    meter.stub, meter.default_output_tokens = auth, 512  # type: ignore[assignment]
    meter.settles = SettleQueue(auth)  # type: ignore[arg-type]
    return meter


async def run(auth: FakeAuth, caller: pb.Principal, body: Any) -> None:
    meters = metering(auth)
    try:
        async with meters.metered(caller, "route/M", "m", 10, None) as meter:
            await body(meter)
    finally:
        await meters.drain(5)


def test_a_finished_call_settles_its_exact_counts_once() -> None:
    auth = FakeAuth()

    async def body(meter: Any) -> None:
        meter.first_token()
        meter.finished(12, 3, "served-model")

    asyncio.run(run(auth, LIMITED, body))
    assert [r.output_tokens for r in auth.reserved] == [512]  # no max_tokens: the default
    [settle] = auth.settled
    assert settle.reservation.id == "r1"
    usage = settle.usage
    assert (usage.input_tokens, usage.output_tokens, usage.model) == (12, 3, "served-model")
    assert (usage.status, usage.error_code, usage.route) == (200, "", "route/M")


def test_an_unlimited_key_is_not_reserved_but_still_gets_its_row() -> None:
    auth = FakeAuth()

    async def body(meter: Any) -> None:
        meter.finished(1, 1, "")

    asyncio.run(run(auth, UNLIMITED, body))
    assert auth.reserved == []
    assert [s.usage.key_id for s in auth.settled] == ["key_u"]


@pytest.mark.parametrize(
    ("raised", "status", "code"),
    [
        (
            ServiceError(Kind.INVALID_ARGUMENT, "CONTEXT_LENGTH_EXCEEDED", "x"),
            400,
            "context_length_exceeded",
        ),
        (asyncio.CancelledError(), 499, "client_disconnected"),
        (RuntimeError("bug"), 500, "internal_error"),
    ],
)
def test_a_call_that_fails_settles_once_with_its_status(
    raised: BaseException, status: int, code: str
) -> None:
    auth = FakeAuth()

    async def body(meter: Any) -> None:
        raise raised

    with pytest.raises(type(raised)):
        asyncio.run(run(auth, LIMITED, body))
    assert [(s.usage.status, s.usage.error_code) for s in auth.settled] == [(status, code)]


def test_auth_unreachable_refuses_the_call_and_settles_nothing() -> None:
    down = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "connect failed"
    )
    auth = FakeAuth(refuse=down)

    async def body(meter: Any) -> None:
        raise AssertionError("ran without a reservation")

    with pytest.raises(ServiceError) as refused:
        asyncio.run(run(auth, LIMITED, body))
    assert (refused.value.kind, refused.value.reason) == (Kind.UNAVAILABLE, "AUTH_UNAVAILABLE")
    assert auth.settled == []
