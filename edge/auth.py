"""Bearer keys -> principals, with a short cache so auth is not asked every time."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

import grpc
from aqueduct.auth.v1 import auth_pb2

from edge.errors import ApiError, from_rpc_error

if TYPE_CHECKING:
    from aqueduct.auth.v1.auth_pb2_grpc import AuthServiceAsyncStub

MAX_CACHED_KEYS = 10_000
VERIFY_TIMEOUT_S = 5.0


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


class Authenticator:
    """Verifies keys with the auth service; answers repeats from memory for `ttl_s`.

    Failures (unknown, revoked, expired) are cached the same way, so a flood of bad
    keys cannot flood auth. If auth cannot be reached, requests fail closed (503).
    """

    def __init__(self, stub: AuthServiceAsyncStub, ttl_s: float) -> None:
        self.stub = stub
        self.ttl_s = ttl_s
        self._cache: dict[str, tuple[float, auth_pb2.Principal | ApiError]] = {}

    async def authenticate(self, headers: Mapping[str, str], request_id: str) -> auth_pb2.Principal:
        secret = bearer_key(headers)
        now = time.monotonic()
        cached = self._cache.get(secret)
        if cached is None or cached[0] <= now:
            cached = (now + self.ttl_s, await self._verify(secret, request_id))
            if len(self._cache) >= MAX_CACHED_KEYS:
                self._evict(now)
            self._cache[secret] = cached
        outcome = cached[1]
        if isinstance(outcome, ApiError):
            raise outcome
        return outcome

    async def _verify(self, secret: str, request_id: str) -> auth_pb2.Principal | ApiError:
        try:
            response = await self.stub.VerifyKey(
                auth_pb2.VerifyKeyRequest(key=secret),
                timeout=VERIFY_TIMEOUT_S,
                metadata=(("x-request-id", request_id),),
            )
        except grpc.aio.AioRpcError as error:
            mapped = from_rpc_error(error, "auth")
            if mapped.status != 401:
                raise mapped from None  # not a verdict on the key: never cache
            return mapped
        return response.principal

    def _evict(self, now: float) -> None:
        for secret in [s for s, (expiry, _) in self._cache.items() if expiry <= now]:
            del self._cache[secret]
        while len(self._cache) >= MAX_CACHED_KEYS:
            del self._cache[next(iter(self._cache))]


def require_model_access(principal: auth_pb2.Principal, model: str) -> None:
    if principal.allowed_models and model not in principal.allowed_models:
        raise ApiError(
            403,
            f"This API key may not use the model '{model}'.",
            type="permission_error",
            param="model",
            code="model_not_allowed",
        )
