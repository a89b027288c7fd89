"""Key verification and bootstrap: the auth service's domain logic."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

from core.errors import Kind, ServiceError
from services.auth.keys import KeyRecord, Limits, hash_secret, new_key_id, new_secret, preview
from services.auth.store import KeyStore
from services.common.private import create_private_file

log = logging.getLogger(__name__)

BOOTSTRAP_FILE = "bootstrap-key"


class KeyAuthority:
    def __init__(self, store: KeyStore) -> None:
        self.store = store

    async def verify(self, secret: str) -> tuple[KeyRecord, Limits]:
        """The active key behind `secret` (compared exactly: case, spaces, prefix)
        and its team's limits."""
        if not secret:
            raise ServiceError(Kind.UNAUTHENTICATED, "KEY_MISSING", "No API key provided.")
        record = await asyncio.to_thread(self.store.find_by_hash, hash_secret(secret))
        if record is None:
            raise ServiceError(Kind.UNAUTHENTICATED, "KEY_UNKNOWN", "Incorrect API key provided.")
        if record.revoked:
            raise ServiceError(
                Kind.UNAUTHENTICATED, "KEY_REVOKED", "This API key has been revoked."
            )
        if not record.usable_at(time.time()):
            raise ServiceError(Kind.UNAUTHENTICATED, "KEY_EXPIRED", "This API key has expired.")
        return record, await asyncio.to_thread(self.store.team_limits, record.team)

    async def principal(self, key_id: str) -> tuple[KeyRecord, Limits]:
        """The active key with this id and its team's limits (VerifyKey's checks)."""
        record = await asyncio.to_thread(self.store.get, key_id) if key_id else None
        if record is None:
            raise ServiceError(Kind.UNAUTHENTICATED, "KEY_UNKNOWN", "Unknown API key id.")
        if record.revoked:
            raise ServiceError(
                Kind.UNAUTHENTICATED, "KEY_REVOKED", "This API key has been revoked."
            )
        if not record.usable_at(time.time()):
            raise ServiceError(Kind.UNAUTHENTICATED, "KEY_EXPIRED", "This API key has expired.")
        return record, await asyncio.to_thread(self.store.team_limits, record.team)

    async def verify_admin(self, secret: str) -> KeyRecord:
        record, _ = await self.verify(secret)
        if not record.admin:
            raise ServiceError(
                Kind.PERMISSION_DENIED, "ADMIN_ONLY", "This operation needs an admin key."
            )
        return record


def bootstrap_admin(store: KeyStore, data_dir: Path, configured_secret: str | None) -> None:
    """Make sure an operator can reach the admin API (the contract's bootstrap key).

    With a configured secret: that secret is an active admin key (idempotent).
    Without: on first start, when no admin key exists, create one, print it once
    and keep it in `<data_dir>/bootstrap-key` (mode 0600). Replicas starting at
    once take turns (the migrations' lock), so they create one key, not one each.
    """
    with store.one_at_a_time("bootstrap-admin"):  # replicas starting together: one key
        _bootstrap_admin(store, data_dir, configured_secret)


def _bootstrap_admin(store: KeyStore, data_dir: Path, configured_secret: str | None) -> None:
    if configured_secret:
        store.ensure_active_admin(_admin_record(configured_secret), hash_secret(configured_secret))
        log.info("bootstrap admin key ensured", extra={"key_preview": preview(configured_secret)})
        return
    if store.has_admin_key():
        return
    secret = new_secret()
    path = data_dir / BOOTSTRAP_FILE
    with os.fdopen(create_private_file(path, os.O_WRONLY | os.O_TRUNC), "w") as handle:
        handle.write(secret + "\n")
    store.insert(_admin_record(secret), hash_secret(secret))
    print(f"Aqueduct bootstrap admin key (shown once, also in {path}): {secret}", flush=True)


def _admin_record(secret: str) -> KeyRecord:
    return KeyRecord(
        id=new_key_id(),
        name="bootstrap-admin",
        team="admin",
        preview=preview(secret),
        admin=True,
        models=None,
        created_at=int(time.time()),
    )
