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


class SilentStream:
    """A watch stream that says READY with heartbeats promised, then falls silent
    (auth's event path broken without the stream ending)."""

    def __init__(self, heartbeats: int) -> None:
        self.messages = [
            pb.WatchKeyEventsResponse(kind=pb.KEY_EVENT_KIND_READY, heartbeat_interval_ms=100),
            *[pb.WatchKeyEventsResponse(kind=pb.KEY_EVENT_KIND_HEARTBEAT)] * heartbeats,
        ]
        self.cancelled = False

    async def read(self) -> pb.WatchKeyEventsResponse:
        if self.messages:
            await asyncio.sleep(0.05)
            return self.messages.pop(0)
        await asyncio.sleep(3600)  # silence
        raise AssertionError("unreachable")

    def cancel(self) -> bool:
        self.cancelled = True
        return True


class WatchedAuth(FakeAuth):
    def __init__(self, principal: pb.Principal, heartbeats: int) -> None:
        super().__init__(principal)
        self.streams: list[SilentStream] = []
        self.heartbeats = heartbeats

    def WatchKeyEvents(self, request: pb.WatchKeyEventsRequest) -> SilentStream:
        stream = SilentStream(self.heartbeats if not self.streams else 0)
        self.streams.append(stream)
        return stream


def test_a_silent_watch_stream_stops_the_cache_being_trusted_within_a_second() -> None:
    auth = WatchedAuth(pb.Principal(key_id="k", team="t"), heartbeats=5)
    authenticator = Authenticator(auth, ttl_s=1.0)  # type: ignore[arg-type]

    async def scenario() -> None:
        authenticator.start()
        try:
            for _ in range(40):  # READY arrives after 50 ms
                if authenticator.watching:
                    break
                await asyncio.sleep(0.01)
            await authenticator.authenticate(HEADERS, "r")
            await authenticator.authenticate(HEADERS, "r")
            assert auth.calls == 1  # trusted while heartbeats arrive
            await asyncio.sleep(0.3)
            assert authenticator.watching  # 0.35 s of heartbeats
            silent_from = asyncio.get_running_loop().time()
            while authenticator.watching:
                assert asyncio.get_running_loop().time() - silent_from < 1.0
                await asyncio.sleep(0.01)
            # 3 missed intervals of 100 ms (from the last heartbeat at ~0.3 s)
            assert auth.streams[0].cancelled
            await authenticator.authenticate(HEADERS, "r")
            assert auth.calls == 2  # the cache was dropped: asked auth again
        finally:
            await authenticator.close()

    asyncio.run(asyncio.wait_for(scenario(), 10))
