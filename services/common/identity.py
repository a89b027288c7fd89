"""Who may call which method, by the caller's certificate identity (mTLS only).

A caller the method does not name is refused (PERMISSION_DENIED), except on a
`keyed` service, where it may present an API key instead (key_scope).

The identity is the Common Name of the client certificate's subject, as the TLS
handshake already parsed it (`context.auth_context()`), so a call costs one
small dict read and a set lookup: no certificate parsing per call. Methods of
services not named in the Access (health, reflection) are open to every caller
with a certificate from the CA.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from core.errors import Kind, ServiceError
from services.common.interceptors import Behavior, CallWrapper, Context, Handler
from services.common.key_scope import CALLER, KeyVerifier, bearer

COMMON_NAME = "x509_common_name"
# Certificate CNs: the edge, the admin CLI, and the services (as auth's callers).
EDGE = "edge"
ADMIN = "admin"
FILES = "files"
INFERENCE = "inference"


@dataclass(frozen=True)
class Access:
    """Identities allowed per service (full name) and, where stricter or wider,
    per method (`/package.Service/Method`)."""

    services: Mapping[str, frozenset[str]]
    methods: Mapping[str, frozenset[str]] = field(default_factory=dict)
    # Services any other caller may use with an API key (services.common.key_scope).
    keyed: frozenset[str] = frozenset()

    def allowed(self, method: str) -> frozenset[str] | None:
        """None: not ours to guard."""
        if method in self.methods:
            return self.methods[method]
        return self.services.get(service_of(method))


def service_of(method: str) -> str:
    return method.lstrip("/").partition("/")[0]


def identity(context: Context) -> str:
    for name in context.auth_context().get(COMMON_NAME, ()):
        return bytes(name).decode(errors="replace")
    return ""


class IdentityWrapper(CallWrapper):
    """PERMISSION_DENIED (reason IDENTITY_NOT_ALLOWED) for a caller whose
    certificate names an identity the method does not allow."""

    def __init__(self, access: Access, verifier: KeyVerifier | None = None) -> None:
        self.access = access
        self.verifier = verifier

    def wrap(self, behavior: Behavior, handler: Handler, method: str) -> Behavior:
        allowed = self.access.allowed(method)
        if allowed is None:
            return behavior
        verifier = self.verifier if service_of(method) in self.access.keyed else None

        async def guarded(request: Any, context: Context) -> Any:
            caller = identity(context)
            if caller in allowed:
                CALLER.set(None)
            elif verifier is not None:
                secret = bearer(context.invocation_metadata())
                CALLER.set(await verifier.principal(secret))
            else:
                raise ServiceError(
                    Kind.PERMISSION_DENIED,
                    "IDENTITY_NOT_ALLOWED",
                    f"The caller '{caller}' may not call {method}.",
                )
            return await behavior(request, context)

        return guarded
