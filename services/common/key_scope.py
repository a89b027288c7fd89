"""Internal callers other than the edge present an Aqueduct API key.

With mTLS, a caller of files or inference whose certificate is not the edge's
sends `authorization: Bearer <key>` metadata; the key is verified with auth
(this service's own mTLS channel) and its principal is the call's scope:
inference uses only the key's models, files only the key's team, whatever the
request message says. The edge scoped its requests itself (it verified the
key), so for it the scope stays None.
"""

from __future__ import annotations

import logging
import time
from contextvars import ContextVar

import grpc
from aqueduct.auth.v1 import auth_pb2 as pb
from aqueduct.auth.v1 import auth_pb2_grpc

from core.errors import Kind, ServiceError
from core.status import error_info

log = logging.getLogger(__name__)
# The principal of the running call's key; None: a trusted caller (the edge) or no TLS.
CALLER: ContextVar[pb.Principal | None] = ContextVar("aqueduct_caller", default=None)
VERIFY_TIMEOUT_S = 5.0
TTL_S = 1.0  # a revoked key is refused within a second, as at the edge
MAX_CACHED = 10_000


def bearer(metadata: object) -> str:
    for key, value in metadata or ():  # type: ignore[attr-defined]
        if key == "authorization":
            scheme, _, secret = str(value).partition(" ")
            if scheme.lower() == "bearer" and secret:
                return secret
    raise ServiceError(
        Kind.UNAUTHENTICATED,
        "KEY_MISSING",
        "Callers other than the edge need 'authorization: Bearer <API key>' metadata.",
    )


class KeyVerifier:
    """VerifyKey with a short cache (answers at most TTL_S old)."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.stub = auth_pb2_grpc.AuthServiceStub(channel)
        self._cache: dict[str, tuple[float, pb.Principal]] = {}

    async def principal(self, secret: str) -> pb.Principal:
        now = time.monotonic()
        cached = self._cache.get(secret)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            answer = await self.stub.VerifyKey(
                pb.VerifyKeyRequest(key=secret), timeout=VERIFY_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.UNAUTHENTICATED:
                info = error_info(error)
                reason = info.reason if info is not None else "KEY_UNKNOWN"
                raise ServiceError(Kind.UNAUTHENTICATED, reason, error.details() or "") from None
            log.warning(
                "key verification failed",
                extra={"code": error.code().name, "details": error.details()},
            )
            raise ServiceError(
                Kind.UNAVAILABLE, "AUTH_UNAVAILABLE", "The auth service did not answer."
            ) from None
        principal = answer.principal
        if principal.expires_at and principal.expires_at <= time.time():
            raise ServiceError(Kind.UNAUTHENTICATED, "KEY_EXPIRED", "This API key has expired.")
        if len(self._cache) >= MAX_CACHED:
            self._cache.clear()
        self._cache[secret] = (now + TTL_S, principal)
        return principal

    async def close(self) -> None:
        await self.channel.close()


def scoped_team(team: str) -> str:
    """The team a files call acts for: the key's, for a key-bearing caller."""
    caller = CALLER.get()
    return team if caller is None else caller.team
