"""Key events fanned out to every watcher (edges), across auth replicas via Redis."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    import redis.asyncio as aioredis

log = logging.getLogger(__name__)
CHANNEL = "aq:key-events"
WATCHER_BACKLOG = 10_000
RESUBSCRIBE_FIRST_DELAY_S = 0.05
RESUBSCRIBE_MAX_DELAY_S = 2.0
SUBSCRIBE_TIMEOUT_S = 5.0
# The hub proves its event path end to end: it publishes a beat of its own on a
# side channel every BEAT_EVERY_S and counts itself live only while one came
# back through its subscription within STALE_AFTER_S. A Redis that hangs (no
# hang-up to notice) is caught this way well within a second.
BEAT_EVERY_S = 0.2
STALE_AFTER_S = 0.6
CHECK_EVERY_S = 0.1
PUBLISH_TIMEOUT_S = 0.5


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
        self._beat_channel = f"{channel}:beat"  # apart, so older replicas never see beats
        self._beat_id = uuid.uuid4().hex.encode()
        self._last_beat = float("-inf")  # monotonic time our last beat came back
        self._subscribed = redis_url is None
        self._redis: aioredis.Redis | None = None
        if redis_url:
            # Imported here: auth without Redis never loads the client (~8 MiB).
            from redis.asyncio import Redis

            self._redis = Redis.from_url(redis_url)
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def healthy(self) -> bool:
        """Whether every change published now reaches every watcher (via Redis)."""
        if self._redis is None:
            return True
        return self._subscribed and time.monotonic() - self._last_beat < STALE_AFTER_S

    async def start(self) -> None:
        if self._redis is not None:
            pubsub = await self._subscribe(self._redis)
            self._tasks = [
                asyncio.create_task(self._listen(self._redis, pubsub)),
                asyncio.create_task(self._beat(self._redis)),
                asyncio.create_task(self._watch_beats()),
            ]

    async def close(self) -> None:
        self.end_streams()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._redis is not None:
            await self._redis.aclose()

    async def key_changed(self, key_id: str) -> None:
        await self._publish(KeyEvent("key", key_id))

    async def team_changed(self, team: str) -> None:
        await self._publish(KeyEvent("team", team))

    async def _publish(self, event: KeyEvent) -> None:
        """Best effort: the change is already committed, so a failed publish must not
        fail the caller. Watchers are told to resync instead (they verify against
        the database until the path is proven live again)."""
        if self._redis is None:
            self._fan_out(event)
            return
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                await self._redis.publish(self._channel, orjson.dumps([event.kind, event.subject]))
        except Exception as error:
            log.warning(
                "key event not published; watchers resync",
                extra={"error": str(error) or type(error).__name__, "kind": event.kind},
            )
            self._went_stale()

    def _went_stale(self) -> None:
        """Until a beat comes back, the hub is not healthy; every stream ends."""
        self._last_beat = float("-inf")
        self.end_streams()

    async def _beat(self, redis: aioredis.Redis) -> None:
        while True:
            if self._subscribed:  # else resubscribing probes Redis, with backoff
                with contextlib.suppress(Exception):  # a lost beat is what staleness measures
                    async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                        await redis.publish(self._beat_channel, self._beat_id)
            await asyncio.sleep(BEAT_EVERY_S)

    async def _watch_beats(self) -> None:
        """Apart from `_beat`, whose publish may hang as long as Redis does."""
        was_healthy = False  # healthy once a first beat is back
        while True:
            await asyncio.sleep(CHECK_EVERY_S)
            healthy = self.healthy
            if was_healthy and not healthy and self._subscribed:
                log.warning("key event path stale (no beat came back); watchers resync")
                self._went_stale()
            was_healthy = healthy

    def _fan_out(self, event: KeyEvent) -> None:
        for queue in list(self._watchers):
            if queue.qsize() >= WATCHER_BACKLOG:
                queue.put_nowait(None)  # too slow: end its stream, it will reconnect
                self._watchers.discard(queue)
            else:
                queue.put_nowait(event)

    async def _subscribe(self, redis: aioredis.Redis) -> aioredis.client.PubSub:
        """A subscription Redis has confirmed: every later publish reaches it."""
        from redis.exceptions import ConnectionError as RedisConnectionError  # loaded: with Redis

        pubsub = redis.pubsub()
        try:
            await pubsub.subscribe(self._channel, self._beat_channel)
            for _ in range(2):
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
        from redis.exceptions import ConnectionError as RedisConnectionError  # loaded: with Redis

        beat_channel = self._beat_channel.encode()
        try:
            while True:
                try:
                    self._subscribed = True
                    async for message in pubsub.listen():
                        if message.get("type") != "message":
                            continue
                        if message["channel"] == beat_channel:
                            if message["data"] == self._beat_id:
                                self._last_beat = time.monotonic()
                            continue
                        kind, subject = orjson.loads(message["data"])
                        self._fan_out(KeyEvent(kind, subject))
                    raise RedisConnectionError("subscription ended")
                except Exception as error:  # not CancelledError: close() still stops it
                    log.warning(
                        "key event subscription lost; resubscribing", extra={"error": str(error)}
                    )
                    self._subscribed = False
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
