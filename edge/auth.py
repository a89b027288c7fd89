"""Bearer keys -> principals, cached at the edge and kept fresh by auth's push.

While the edge is subscribed to auth's key events, a verified principal is
trusted for `watched_ttl_s` (no auth call on the hot path) and dropped the
moment auth says its key or team changed. When the subscription is down,
nothing cached is trusted for longer than `ttl_s` (<= 1 s), so a revocation
still reaches every edge within a second. "Down" includes a stream that is
open but silent: auth sends READY only while its own event path (Redis) is
live and a heartbeat after it, so an edge that misses heartbeats for
HEARTBEAT_MISSES intervals stops trusting its cache and asks auth (which reads
the database) for every key. If auth cannot be reached at all, requests fail
closed (503).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import grpc
from aqueduct.auth.v1 import auth_pb2 as pb

from core import tracing
from edge.errors import ApiError, from_rpc_error

if TYPE_CHECKING:
    from aqueduct.auth.v1.auth_pb2_grpc import AuthServiceAsyncStub

log = logging.getLogger(__name__)
MAX_CACHED_KEYS = 10_000
VERIFY_TIMEOUT_S = 5.0
RECONNECT_MAX_S = 2.0
HEARTBEAT_MISSES = 3  # missed intervals before the stream counts as broken
MAX_SILENCE_S = 0.9  # and never longer than this: revocation within 1 s


def bearer_key(headers: Mapping[str, str]) -> str:
    """The secret after `Bearer ` exactly as sent; anything else is no key."""
    value = headers.get("authorization", "")
    scheme, _, secret = value.partition(" ")
    if scheme.lower() != "bearer" or not secret:
        raise ApiError(
            401,
            "Missing API key: send 'Authorization: Bearer <key>'.",
            type="authentication_error",
            code="missing_api_key",
        )
    return secret


def key_expired() -> ApiError:
    # A fresh error each time: a shared instance raised again and again keeps
    # every raise's traceback, and with it each request's frames, alive.
    return ApiError(
        401, "This API key has expired.", type="authentication_error", code="key_expired"
    )


class Authenticator:
    def __init__(
        self,
        stub: AuthServiceAsyncStub,
        ttl_s: float,
        watched_ttl_s: float = 300.0,
        wall_clock: Callable[[], float] = time.time,  # for key expiry; tests pass their own
    ) -> None:
        self.stub = stub
        self.wall_clock = wall_clock
        self.ttl_s = ttl_s
        self.watched_ttl_s = watched_ttl_s
        self.watching = False
        self._cache: dict[str, tuple[float, pb.Principal | ApiError]] = {}
        self._generation = 0  # bumped on every event: answers older than it are suspect
        self._watcher: asyncio.Task[None] | None = None
        self.hits = 0  # lookups answered from the cache / asked of auth (for /metrics)
        self.misses = 0

    def start(self) -> None:
        self._watcher = asyncio.create_task(self._watch())

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher

    async def authenticate(self, headers: Mapping[str, str], request_id: str) -> pb.Principal:
        secret = bearer_key(headers)
        now = time.monotonic()
        cached = self._cache.get(secret)
        if cached is None or cached[0] <= now:
            self.misses += 1
            generation = self._generation
            outcome = await self._verify(secret, request_id)
            trusted = (
                self.watching
                and generation == self._generation
                and isinstance(outcome, pb.Principal)
            )
            cached = (now + (self.watched_ttl_s if trusted else self.ttl_s), outcome)
            if len(self._cache) >= MAX_CACHED_KEYS:
                self._evict(now)
            self._cache[secret] = cached
        else:
            self.hits += 1
        outcome = cached[1]
        if isinstance(outcome, ApiError):
            raise outcome.copy()  # the cached verdict stays clean (see key_expired)
        if outcome.expires_at and outcome.expires_at <= self.wall_clock():
            raise key_expired()
        return outcome

    async def _verify(self, secret: str, request_id: str) -> pb.Principal | ApiError:
        try:
            response = await self.stub.VerifyKey(
                pb.VerifyKeyRequest(key=secret),
                timeout=VERIFY_TIMEOUT_S,
                metadata=tracing.call_metadata(request_id),
            )
        except grpc.aio.AioRpcError as error:
            mapped = from_rpc_error(error, "auth")
            if mapped.status != 401:
                raise mapped from None  # not a verdict on the key: never cache
            return mapped
        return response.principal

    async def _watch(self) -> None:
        delay = 0.05
        while True:
            call = self.stub.WatchKeyEvents(pb.WatchKeyEventsRequest())
            try:
                await self._follow(call)
            except grpc.aio.AioRpcError as error:
                log.warning("key event stream lost", extra={"code": error.code().name})
            except TimeoutError:
                log.warning("key event heartbeat missed; verifying every key with auth")
            finally:
                call.cancel()
            if self.watching:  # this stream was live: come back quickly
                delay = 0.05
            self._stop_trusting()
            await asyncio.sleep(delay)
            delay = min(RECONNECT_MAX_S, delay * 2)

    async def _follow(self, call: grpc.aio.UnaryStreamCall[Any, Any]) -> None:
        """Apply events until the stream ends; raise TimeoutError when a stream
        that promised heartbeats falls silent (auth's event path is broken)."""
        silence: float | None = None  # an older auth sends no heartbeats
        while True:
            async with asyncio.timeout(silence):
                event = await call.read()
            if not isinstance(event, pb.WatchKeyEventsResponse):  # EOF
                return
            if event.kind == pb.KEY_EVENT_KIND_READY and event.heartbeat_interval_ms:
                silence = min(MAX_SILENCE_S, HEARTBEAT_MISSES * event.heartbeat_interval_ms / 1000)
            self._apply(event)

    def _apply(self, event: pb.WatchKeyEventsResponse) -> None:
        if event.kind == pb.KEY_EVENT_KIND_HEARTBEAT:
            return  # nothing changed; its arrival is what keeps the trust
        self._generation += 1
        if event.kind == pb.KEY_EVENT_KIND_READY:
            self._cache.clear()  # whatever happened before READY is unknown
            self.watching = True
        elif event.kind == pb.KEY_EVENT_KIND_KEY_CHANGED:
            self._forget(lambda p: p.key_id == event.key_id)
        elif event.kind == pb.KEY_EVENT_KIND_TEAM_CHANGED:
            self._forget(lambda p: p.team == event.team)

    def _forget(self, matches: Callable[[pb.Principal], bool]) -> None:
        for secret in [
            s for s, (_, o) in self._cache.items() if isinstance(o, pb.Principal) and matches(o)
        ]:
            del self._cache[secret]

    def _stop_trusting(self) -> None:
        self.watching = False
        self._generation += 1
        self._cache.clear()

    def _evict(self, now: float) -> None:
        for secret in [s for s, (expiry, _) in self._cache.items() if expiry <= now]:
            del self._cache[secret]
        while len(self._cache) >= MAX_CACHED_KEYS:
            del self._cache[next(iter(self._cache))]


def require_model_access(
    principal: pb.Principal, model: str, fallbacks: Sequence[str] = ()
) -> None:
    """The key may use `model` and every fallback it names (each could serve)."""
    if not principal.allowed_models:
        return
    for wanted in (model, *fallbacks):
        if wanted not in principal.allowed_models:
            raise ApiError(
                403,
                f"This API key may not use the model '{wanted}'.",
                type="permission_error",
                param="model" if wanted == model else "models",
                code="model_not_allowed",
            )


def require_admin(principal: pb.Principal) -> None:
    if not principal.admin:
        raise ApiError(
            403, "This route needs an admin key.", type="permission_error", code="admin_only"
        )
