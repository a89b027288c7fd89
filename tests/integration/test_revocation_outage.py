"""Revocation reaches every edge within a second also while Redis is down or hung.

One auth, two edges, a Redis of the test's own. While Redis is down auth cannot
fan key events out, so the edges must stop trusting their key caches (auth stops
sending heartbeats on the watch stream) and ask auth, which reads the database,
for every key: a key revoked through edge 1 is refused by edge 2 within 1 s, and
keys that did not change keep working. The admin call answers what it committed.
"""

from __future__ import annotations

import concurrent.futures
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fake_upstream import FakeUpstream
from tests.integration.test_accounting_faults import ADMIN, Running
from tests.integration.test_outages import Gateway
from tests.processes import free_port, spawn, stop, wait_for
from tests.redis_server import RedisServer

REFUSED_WITHIN_S = 1.0


@pytest.fixture()
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream("revocation").start()
    yield fake
    fake.stop()


@pytest.fixture()
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def models_status(base: str, secret: str) -> int:
    answer = httpx.get(
        f"{base}/v1/models", headers={"authorization": f"Bearer {secret}"}, timeout=10
    )
    return answer.status_code


def new_key(base: str) -> tuple[str, str]:
    created = httpx.post(f"{base}/v1/admin/keys", headers=ADMIN, json={"name": "k"}, timeout=10)
    assert created.status_code == 201, created.text
    return created.json()["id"], created.json()["key"]


class TwoEdges:
    def __init__(self, tmp_path: Path, upstream: FakeUpstream, redis: RedisServer) -> None:
        self.running = Running(Gateway.on(tmp_path, upstream, {"AQUEDUCT_REDIS_URL": redis.url}))
        self.edge1 = self.running.base
        port = free_port()
        env = {**self.running.gateway.env, "AQUEDUCT_HTTP_PORT": str(port)}
        self.process = spawn(["-m", "edge"], env, tmp_path / "edge2.log")
        self.edge2 = f"http://127.0.0.1:{port}"
        wait_for(lambda: self.running_status(self.edge2) == 200, 30, "edge 2")

    def running_status(self, base: str) -> int:
        try:
            return httpx.get(f"{base}/v1/models", headers=ADMIN, timeout=10).status_code
        except httpx.HTTPError:
            return 0

    def warm(self, secret: str) -> None:
        """Both edges have verified the key while the event path was live: cached, trusted."""
        for base in (self.edge1, self.edge2):
            for _ in range(3):
                assert models_status(base, secret) == 200

    def revoke_and_time_refusal(self, key_id: str, secret: str) -> float:
        """Revoke through edge 1 while edge 2 is asked again and again; seconds from
        sending the revoke until edge 2 first refuses the key."""
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            sent = time.monotonic()
            revoking = pool.submit(
                httpx.delete, f"{self.edge1}/v1/admin/keys/{key_id}", headers=ADMIN, timeout=10
            )
            took = None
            while took is None and time.monotonic() < sent + 5:
                if models_status(self.edge2, secret) == 401:
                    took = time.monotonic() - sent
                time.sleep(0.02)
            answer = revoking.result(10)
        assert answer.status_code == 200, answer.text  # committed, so answered as such
        assert answer.json()["revoked"] is True
        assert took is not None, "edge 2 still serves the revoked key 5 s after the revoke"
        return took

    def stop(self) -> None:
        stop(self.process)
        self.running.stop()


def test_revoked_during_a_redis_outage_edge_2_refuses_within_1_s(
    tmp_path: Path, upstream: FakeUpstream, redis: RedisServer
) -> None:
    edges = TwoEdges(tmp_path, upstream, redis)
    try:
        key_id, secret = new_key(edges.edge1)
        _, other = new_key(edges.edge1)
        edges.warm(secret)
        edges.warm(other)

        redis.stop()
        time.sleep(0.5)  # the edges have watched again by now: no READY may trust the cache
        edges.warm(secret)  # keys still verify (against the database) during the outage

        took = edges.revoke_and_time_refusal(key_id, secret)
        assert took < REFUSED_WITHIN_S, f"edge 2 refused the revoked key only after {took:.2f} s"
        assert models_status(edges.edge2, other) == 200  # closed for the change, not for all

        redis.start()
        wait_for(lambda: models_status(edges.edge2, other) == 200, 10, "edge 2 after Redis")
        for base in (edges.edge1, edges.edge2):
            assert models_status(base, secret) == 401
            assert models_status(base, other) == 200
    finally:
        edges.stop()


def test_revoked_while_redis_hangs_edge_2_refuses_within_1_s(
    tmp_path: Path, upstream: FakeUpstream, redis: RedisServer
) -> None:
    """A hung Redis hangs up on no one: only the missing heartbeats tell."""
    edges = TwoEdges(tmp_path, upstream, redis)
    assert redis.process is not None
    try:
        key_id, secret = new_key(edges.edge1)
        edges.warm(secret)
        redis.process.send_signal(signal.SIGSTOP)
        try:
            took = edges.revoke_and_time_refusal(key_id, secret)
        finally:
            redis.process.send_signal(signal.SIGCONT)
        assert took < REFUSED_WITHIN_S, f"edge 2 refused the revoked key only after {took:.2f} s"
        assert models_status(edges.edge2, secret) == 401
    finally:
        edges.stop()
