"""Key events across a lost Redis subscription: the edge's cache must never miss one silently.

A watcher's stream (one edge's WatchKeyEvents) must either carry every event published
while it is open, or end; an ended stream makes the edge drop its cache and watch again.
These run against this machine's real Redis (CI starts it); elsewhere they skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from services.auth.events import EventHub, KeyEvent
from tests.services_available import REDIS, REDIS_URL, listening

pytestmark = pytest.mark.skipif(
    not listening(REDIS), reason="Redis is not running on 127.0.0.1:6379"
)

WAIT_S = 3.0  # every wait is bounded; the hub resubscribes well within this


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 30))


async def next_item(queue: asyncio.Queue[KeyEvent | None]) -> KeyEvent | None:
    return await asyncio.wait_for(queue.get(), WAIT_S)


async def watch_like_the_edge(hub: EventHub, publish: Callable[[], Awaitable[None]]) -> KeyEvent:
    """Join, publish, and join again whenever the stream ends, as the edge does,
    until a stream carries the event: the hub is subscribed again."""
    deadline = time.monotonic() + WAIT_S
    while True:
        watcher = hub.subscribe()
        await publish()
        left = deadline - time.monotonic()
        event = await asyncio.wait_for(watcher.get(), max(left, 0.01))
        if event is not None:
            return event


def unique_name() -> str:
    """A channel and client name of our own, so nothing else on this Redis is touched."""
    return f"aq-test-{uuid.uuid4().hex[:12]}"


class FlakyRedis:
    """A TCP proxy to the real Redis that can go down and come back, like a restart.

    While down it drops every connection and hangs up on new ones, so the real Redis
    (and whoever else uses it) is left alone.
    """

    def __init__(self) -> None:
        self.up = True
        self.connections_tried = 0
        self._open: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def stop(self) -> None:
        self.go_down()
        assert self._server is not None
        self._server.close()
        await asyncio.wait_for(self._server.wait_closed(), WAIT_S)

    def go_down(self) -> None:
        self.up = False
        for writer in list(self._open):
            writer.transport.abort()

    def come_back(self) -> None:
        self.up = True

    async def _serve(
        self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter
    ) -> None:
        self.connections_tried += 1
        if not self.up:
            client.transport.abort()
            return
        redis_reader, redis = await asyncio.wait_for(asyncio.open_connection(*REDIS), WAIT_S)
        self._open.update((client, redis))
        try:
            await asyncio.gather(self._pipe(client_reader, redis), self._pipe(redis_reader, client))
        finally:
            for writer in (client, redis):
                self._open.discard(writer)
                writer.transport.abort()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.transport.abort()


async def kill_subscription(client_name: str) -> int:
    """Have Redis hang up on the hub's pub/sub connection, and only on that one."""
    admin = aioredis.Redis.from_url(REDIS_URL)
    try:
        ours = [c for c in await admin.client_list(_type="pubsub") if c["name"] == client_name]
        return sum([await admin.client_kill_filter(_id=c["id"]) for c in ours])
    finally:
        await admin.aclose()


def test_after_redis_kills_the_subscription_watchers_resync_and_see_later_events() -> None:
    """Redis hangs up on subscribers when it restarts or evicts them (CLIENT KILL,
    client-output-buffer-limit); the hub must come back on its own."""
    name = unique_name()

    async def scenario() -> None:
        hub = EventHub(f"{REDIS_URL}?client_name={name}", channel=name)
        await asyncio.wait_for(hub.start(), WAIT_S)
        try:
            watcher = hub.subscribe()
            await hub.key_changed("before")
            assert await next_item(watcher) == KeyEvent("key", "before")

            assert await kill_subscription(name) == 1
            assert await next_item(watcher) is None  # the gap is announced, not hidden

            event = await watch_like_the_edge(hub, lambda: hub.key_changed("after"))
            assert event == KeyEvent("key", "after")
        finally:
            await asyncio.wait_for(hub.close(), WAIT_S)

    run(scenario)


def test_watchers_that_join_during_a_redis_outage_are_told_to_resync_once_it_is_back() -> None:
    """A stream opened while the hub is unsubscribed has already missed whatever Redis
    carried meanwhile, so it has to end once the hub is subscribed again."""
    name = unique_name()

    async def scenario() -> None:
        redis = FlakyRedis()
        await redis.start()
        hub = EventHub(redis.url, channel=name)
        other_replica = aioredis.Redis.from_url(REDIS_URL)
        await asyncio.wait_for(hub.start(), WAIT_S)
        try:
            watcher = hub.subscribe()
            redis.go_down()
            assert await next_item(watcher) is None

            joined_during_outage = hub.subscribe()
            redis.come_back()
            await other_replica.publish(name, b'["key", "while resubscribing"]')
            assert await next_item(joined_during_outage) in (
                KeyEvent("key", "while resubscribing"),
                None,
            )

            event = await watch_like_the_edge(hub, lambda: hub.team_changed("after"))
            assert event == KeyEvent("team", "after")
        finally:
            await asyncio.wait_for(hub.close(), WAIT_S)
            await other_replica.aclose()
            await redis.stop()

    run(scenario)


def test_an_outage_is_retried_with_backoff_and_logged_once(caplog: Any) -> None:
    """A long Redis outage must not spin the auth service or flood its log."""
    name = unique_name()

    async def scenario() -> None:
        redis = FlakyRedis()
        await redis.start()
        hub = EventHub(redis.url, channel=name)
        await asyncio.wait_for(hub.start(), WAIT_S)
        try:
            redis.go_down()
            tried_before = redis.connections_tried
            await asyncio.sleep(2.0)
            assert redis.connections_tried - tried_before <= 10

            redis.come_back()
            event = await watch_like_the_edge(hub, lambda: hub.key_changed("back"))
            assert event == KeyEvent("key", "back")
        finally:
            await asyncio.wait_for(hub.close(), WAIT_S)
            await redis.stop()

    with caplog.at_level(logging.WARNING, logger="services.auth.events"):
        run(scenario)
    # Only the hub's own records count: the session's shared stack runs an edge in this
    # process, and on a loaded machine it may log a missed-heartbeat warning meanwhile.
    warnings = [
        r
        for r in caplog.records
        if r.name == "services.auth.events" and r.levelno >= logging.WARNING
    ]
    assert len(warnings) == 1
