"""Key events fanned out to every watcher (edges), across auth replicas via Redis."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import orjson
import redis.asyncio as aioredis

log = logging.getLogger(__name__)
CHANNEL = "aq:key-events"
WATCHER_BACKLOG = 10_000


@dataclass(frozen=True, slots=True)
class KeyEvent:
    kind: str  # "key" | "team"
    subject: str  # key id or team name


class EventHub:
    """Publish key changes; every `watch()` sees every change made on any replica.

    Without Redis the hub is in-process (one auth replica). With Redis, changes go
    through a pub/sub channel and come back to every replica, this one included.
    """

    def __init__(self, redis_url: str | None = None) -> None:
        self._watchers: set[asyncio.Queue[KeyEvent | None]] = set()
        self._redis = aioredis.Redis.from_url(redis_url) if redis_url else None
        self._listener: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._redis is not None:
            pubsub = self._redis.pubsub()
            await pubsub.subscribe(CHANNEL)
            self._listener = asyncio.create_task(self._listen(pubsub))

    async def close(self) -> None:
        for queue in self._watchers:
            queue.put_nowait(None)
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        if self._redis is not None:
            await self._redis.aclose()

    async def key_changed(self, key_id: str) -> None:
        await self._publish(KeyEvent("key", key_id))

    async def team_changed(self, team: str) -> None:
        await self._publish(KeyEvent("team", team))

    async def _publish(self, event: KeyEvent) -> None:
        if self._redis is None:
            self._fan_out(event)
        else:
            await self._redis.publish(CHANNEL, orjson.dumps([event.kind, event.subject]))

    def _fan_out(self, event: KeyEvent) -> None:
        for queue in list(self._watchers):
            if queue.qsize() >= WATCHER_BACKLOG:
                queue.put_nowait(None)  # too slow: end its stream, it will reconnect
                self._watchers.discard(queue)
            else:
                queue.put_nowait(event)

    async def _listen(self, pubsub: aioredis.client.PubSub) -> None:
        while True:
            try:
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        kind, subject = orjson.loads(message["data"])
                        self._fan_out(KeyEvent(kind, subject))
            except asyncio.CancelledError:
                raise
            except Exception:  # keep listening; watchers resync on reconnect
                log.exception("key event subscription failed; retrying")
                for queue in list(self._watchers):
                    queue.put_nowait(None)
                self._watchers.clear()
                await asyncio.sleep(1.0)

    def subscribe(self) -> asyncio.Queue[KeyEvent | None]:
        """A queue of every event from now on; None means the stream must end."""
        queue: asyncio.Queue[KeyEvent | None] = asyncio.Queue()
        self._watchers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[KeyEvent | None]) -> None:
        self._watchers.discard(queue)
