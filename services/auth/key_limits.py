"""The limits ReserveQuota enforces, from auth's own key record (never the caller's).

A reserve is on every request's path, so records are cached per key id and
dropped by the same key events the edges follow. The cache is used only while
the event hub is healthy (every change reaches it); otherwise each reserve
reads the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

from core.errors import Kind, ServiceError
from services.auth.events import EventHub
from services.auth.keys import Limits
from services.auth.store import KeyStore

MAX_ENTRIES = 100_000
RESYNC_DELAY_S = 0.05


@dataclass(frozen=True, slots=True)
class KeyLimits:
    team: str
    key: Limits
    team_limits: Limits
    expires_at: int | None


class KeyLimitsSource:
    def __init__(self, store: KeyStore, events: EventHub) -> None:
        self.store = store
        self.events = events
        self._cache: dict[str, KeyLimits] = {}
        self._live = False  # subscribed to the hub: events reach the cache
        self._generation = 0  # bumped on every event: reads older than it are not kept
        self._follower: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._follower = asyncio.create_task(self._follow())

    async def close(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower

    async def of(self, key_id: str) -> KeyLimits:
        """The key's team and limits; UNAUTHENTICATED for an unknown, revoked or
        expired key."""
        trusted = self._live and self.events.healthy
        found = self._cache.get(key_id) if trusted else None
        if found is None:
            generation = self._generation
            found = await self._read(key_id)
            if trusted and generation == self._generation and self.events.healthy:
                if len(self._cache) >= MAX_ENTRIES:
                    self._cache.clear()
                self._cache[key_id] = found
        if found.expires_at is not None and found.expires_at <= time.time():
            raise ServiceError(Kind.UNAUTHENTICATED, "KEY_EXPIRED", "This API key has expired.")
        return found

    async def _read(self, key_id: str) -> KeyLimits:
        record = await asyncio.to_thread(self.store.get, key_id)
        if record is None:
            raise ServiceError(
                Kind.UNAUTHENTICATED, "KEY_UNKNOWN", f"No key with id '{key_id}'.", param="key_id"
            )
        if record.revoked:
            raise ServiceError(
                Kind.UNAUTHENTICATED, "KEY_REVOKED", "This API key has been revoked."
            )
        team_limits = await asyncio.to_thread(self.store.team_limits, record.team)
        return KeyLimits(record.team, record.limits, team_limits, record.expires_at)

    async def _follow(self) -> None:
        """Drop what changed; when the hub ends our stream (events may be lost),
        drop everything and join again."""
        while True:
            queue = self.events.subscribe()
            self._live = True
            try:
                while (event := await queue.get()) is not None:
                    self._generation += 1
                    if event.kind == "key":
                        self._cache.pop(event.subject, None)
                    else:
                        for key_id in [
                            k for k, v in self._cache.items() if v.team == event.subject
                        ]:
                            del self._cache[key_id]
            finally:
                self._live = False
                self._generation += 1
                self._cache.clear()
                self.events.unsubscribe(queue)
            await asyncio.sleep(RESYNC_DELAY_S)
