"""The edge's key cache: a cached key stops working the moment it expires, and
a refused key is refused again without growing anything (fresh errors)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aqueduct.auth.v1 import auth_pb2 as pb

from edge.auth import Authenticator
from edge.errors import ApiError

SECRET = "sk-aq-test"
HEADERS = {"authorization": f"Bearer {SECRET}"}


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeAuth:
    """VerifyKey answers with one principal; counts how often it was asked."""

    def __init__(self, principal: pb.Principal) -> None:
        self.principal = principal
        self.calls = 0

    async def VerifyKey(self, request: pb.VerifyKeyRequest, **_: Any) -> pb.VerifyKeyResponse:
        self.calls += 1
        return pb.VerifyKeyResponse(principal=self.principal)


def test_a_cached_key_is_refused_once_its_expiry_passes() -> None:
    clock = Clock(1_000.0)
    auth = FakeAuth(pb.Principal(key_id="k", team="t", expires_at=1_010))
    authenticator = Authenticator(auth, ttl_s=300.0, wall_clock=clock)  # type: ignore[arg-type]

    async def scenario() -> None:
        assert (await authenticator.authenticate(HEADERS, "r")).key_id == "k"
        clock.now = 1_009.9
        assert (await authenticator.authenticate(HEADERS, "r")).key_id == "k"
        clock.now = 1_010.0
        errors = []
        for _ in range(2):
            with pytest.raises(ApiError) as caught:
                await authenticator.authenticate(HEADERS, "r")
            errors.append(caught.value)
        assert all(e.status == 401 and e.code == "key_expired" for e in errors)
        assert errors[0] is not errors[1]  # a fresh error each time: nothing accumulates
        assert auth.calls == 1  # all from the cache: expiry needs no call to auth

    asyncio.run(scenario())
