"""Key events fanned out to every watcher (edges), across auth replicas via Redis."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

log = logging.getLogger(__name__)
CHANNEL = "aq:key-events"
WATCHER_BACKLOG = 10_000
RESUBSCRIBE_FIRST_DELAY_S = 0.05
RESUBSCRIBE_MAX_DELAY_S = 2.0
SUBSCRIBE_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class KeyEvent:
    kind: str  # "key" | "team"
    subject: str  # key id or team name


async def close_subscription(pubsub: aioredis.client.PubSub) -> None:
    """Release its connection; one Redis already dropped may fail to close, which is fine."""
    with contextlib.suppress(Exception):
        await pubsub.aclose()  # type: ignore[no-untyped-call]


class EventHub:
    """Publish key changes; every `watch()` sees every change made on any replica.

    Without Redis the hub is in-process (one auth replica). With Redis, changes go
    through a pub/sub channel and come back to every replica, this one included.
    """

    def __init__(self, redis_url: str | None = None, channel: str = CHANNEL) -> None:
        self._channel = channel
        self._watchers: set[asyncio.Queue[KeyEvent | None]] = set()
        self._redis = aioredis.Redis.from_url(redis_url) if redis_url else None
        self._listener: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._redis is not None:
            pubsub = await self._subscribe(self._redis)
            self._listener = asyncio.create_task(self._listen(self._redis, pubsub))

    async def close(self) -> None:
        self.end_streams()
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
            await self._redis.publish(self._channel, orjson.dumps([event.kind, event.subject]))

    def _fan_out(self, event: KeyEvent) -> None:
        for queue in list(self._watchers):
            if queue.qsize() >= WATCHER_BACKLOG:
                queue.put_nowait(None)  # too slow: end its stream, it will reconnect
                self._watchers.discard(queue)
            else:
                queue.put_nowait(event)

    async def _subscribe(self, redis: aioredis.Redis) -> aioredis.client.PubSub:
        """A subscription Redis has confirmed: every later publish reaches it."""
        pubsub = redis.pubsub()
        try:
            await pubsub.subscribe(self._channel)
            reply = await pubsub.get_message(timeout=SUBSCRIBE_TIMEOUT_S)
            if reply is None or reply["type"] != "subscribe":
                raise RedisConnectionError(f"no subscribe confirmation: {reply!r}")
        except BaseException:
            await close_subscription(pubsub)
            raise
        return pubsub

    async def _listen(self, redis: aioredis.Redis, pubsub: aioredis.client.PubSub) -> None:
        """Fan out the channel; after a drop, resubscribe and end every watcher's stream.

        Events published while unsubscribed are lost, so each watcher must resync:
        those open at the drop, and those that joined before the subscription was back.
        """
        try:
            while True:
                try:
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            kind, subject = orjson.loads(message["data"])
                            self._fan_out(KeyEvent(kind, subject))
                    raise RedisConnectionError("subscription ended")
                except Exception as error:  # not CancelledError: close() still stops it
                    log.warning(
                        "key event subscription lost; resubscribing", extra={"error": str(error)}
                    )
                    self.end_streams()
                    await close_subscription(pubsub)
                    pubsub = await self._resubscribe(redis)
                    self.end_streams()
                    log.info("key event subscription restored")
        finally:
            await close_subscription(pubsub)

    async def _resubscribe(self, redis: aioredis.Redis) -> aioredis.client.PubSub:
        delay = RESUBSCRIBE_FIRST_DELAY_S
        while True:
            await asyncio.sleep(delay)
            try:
                return await self._subscribe(redis)
            except Exception as error:  # still down: already warned once for this drop
                log.debug("key event resubscribe failed", extra={"error": str(error)})
                delay = min(RESUBSCRIBE_MAX_DELAY_S, delay * 2)

    def end_streams(self) -> None:
        """End every watcher's stream (the watcher resyncs on its next one)."""
        for queue in list(self._watchers):
            queue.put_nowait(None)
        self._watchers.clear()

    def subscribe(self) -> asyncio.Queue[KeyEvent | None]:
        """A queue of every event from now on; None means the stream must end."""
        queue: asyncio.Queue[KeyEvent | None] = asyncio.Queue()
        self._watchers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[KeyEvent | None]) -> None:
        self._watchers.discard(queue)
