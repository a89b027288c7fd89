"""What admins may do to keys and teams, with every input checked and named.

Validation lives here, not in the edge, so internal gRPC callers and the CLI
get the same answers as HTTP clients.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, replace
from typing import Any

from core.errors import Kind, ServiceError
from core.limit_names import LIMIT_NAMES
from services.auth.events import EventHub
from services.auth.keys import (
    KeyRecord,
    Limits,
    hash_secret,
    new_key_id,
    new_secret,
    preview,
)
from services.auth.store import KeyStore

MAX_NAME = 200
MAX_MODELS = 1000
UNSET: Any = object()


def invalid(param: str, message: str) -> ServiceError:
    return ServiceError(Kind.INVALID_ARGUMENT, "INVALID_FIELD", message, param=param)


@dataclass(frozen=True)
class KeyChanges:
    """Fields to set; UNSET leaves a field as it is."""

    name: Any = UNSET
    team: Any = UNSET
    models: Any = UNSET  # tuple of ids, or None for every model
    admin: Any = UNSET
    expires_at: Any = UNSET  # unix seconds, or None for never
    limits: Any = UNSET  # Limits


def check_limits(limits: dict[str, int | None], param: str = "limits") -> Limits:
    for name, value in limits.items():
        if name not in LIMIT_NAMES:
            raise invalid(
                f"{param}.{name}", f"Unknown limit '{name}'; use {', '.join(LIMIT_NAMES)}."
            )
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise invalid(
                f"{param}.{name}", f"'{param}.{name}' must be a whole number of at least 1."
            )
    return Limits(**limits)


def _checked(changes: KeyChanges, now: float) -> KeyChanges:
    if changes.name is not UNSET and (not changes.name or len(changes.name) > MAX_NAME):
        raise invalid("name", f"'name' must be 1 to {MAX_NAME} characters.")
    if changes.team is not UNSET and (not changes.team or len(changes.team) > MAX_NAME):
        raise invalid("team", f"'team' must be 1 to {MAX_NAME} characters.")
    models = changes.models
    if models not in (UNSET, None) and (
        len(models) > MAX_MODELS or not all(m and len(m) <= MAX_NAME for m in models)
    ):
        raise invalid("models", f"'models' must hold at most {MAX_MODELS} non-empty model ids.")
    if changes.expires_at not in (UNSET, None) and changes.expires_at <= now:
        raise invalid("expires_at", "'expires_at' must be in the future (unix seconds).")
    if changes.limits is not UNSET:
        check_limits({k: getattr(changes.limits, k) for k in LIMIT_NAMES})
    return changes


def _apply(record: KeyRecord, changes: KeyChanges) -> KeyRecord:
    fields = {name: getattr(changes, name) for name in KeyChanges.__dataclass_fields__}
    return replace(record, **{k: v for k, v in fields.items() if v is not UNSET})


class KeyAdmin:
    def __init__(self, store: KeyStore, events: EventHub) -> None:
        self.store = store
        self.events = events

    async def create(self, changes: KeyChanges) -> tuple[KeyRecord, str]:
        if changes.name is UNSET:
            raise invalid("name", "'name' is required.")
        now = time.time()
        _checked(changes, now)
        secret, key_id = new_secret(), new_key_id()
        base = KeyRecord(
            id=key_id,
            name="",
            team=key_id,
            preview=preview(secret),
            admin=False,
            models=None,
            created_at=int(now),
        )
        record = _apply(base, changes)
        await asyncio.to_thread(self.store.insert, record, hash_secret(secret))
        return record, secret

    async def list_keys(self) -> list[KeyRecord]:
        return await asyncio.to_thread(self.store.all_keys)

    async def get(self, key_id: str) -> KeyRecord:
        record = await asyncio.to_thread(self.store.get, key_id)
        if record is None:
            raise ServiceError(
                Kind.NOT_FOUND, "KEY_NOT_FOUND", f"No key with id '{key_id}'.", param="id"
            )
        return record

    async def update(self, key_id: str, changes: KeyChanges) -> KeyRecord:
        _checked(changes, time.time())
        return await self._save(_apply(await self.get(key_id), changes))

    async def revoke(self, key_id: str) -> KeyRecord:
        return await self._save(replace(await self.get(key_id), revoked=True))

    async def _save(self, record: KeyRecord) -> KeyRecord:
        saved = await asyncio.to_thread(self.store.save, record)
        if saved is None:
            raise ServiceError(
                Kind.NOT_FOUND, "KEY_NOT_FOUND", f"No key with id '{record.id}'.", param="id"
            )
        await self.events.key_changed(record.id)
        return saved

    async def set_team_limits(self, team: str, limits: Limits) -> Limits:
        if not team or len(team) > MAX_NAME:
            raise invalid("team", f"'team' must be 1 to {MAX_NAME} characters.")
        check_limits({k: getattr(limits, k) for k in LIMIT_NAMES})
        await asyncio.to_thread(self.store.set_team_limits, team, limits)
        await self.events.team_changed(team)
        return limits

    async def team_limits(self, team: str) -> Limits:
        return await asyncio.to_thread(self.store.team_limits, team)

    async def usage(self, filters: dict[str, Any], group_by: str | None) -> list[dict[str, Any]]:
        since, until = filters.get("since"), filters.get("until")
        if since is not None and until is not None and until < since:
            raise invalid("until", "'until' must not be before 'since'.")
        return await asyncio.to_thread(self.store.usage_totals, filters, group_by)
