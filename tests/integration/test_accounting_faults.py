"""Exact accounting under faults, with real processes: a Redis of the test's own
stopped and started again, an auth replica killed with SIGKILL, four replicas
starting at once, an upstream sending a decompression bomb. Every ledger count
is checked against what the fake upstream really served."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy

from services.auth.keys import hash_secret
from tests.fake_upstream import FakeUpstream, Reply
from tests.integration.test_outages import KEY, SERVICES, Gateway
from tests.processes import free_port, serving, spawn, stop, wait_for
from tests.redis_server import RedisServer
from tests.services_available import (
    POSTGRES,
    fresh_postgres_database,
    listening,
)

CHAT = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
ADMIN = {"authorization": f"Bearer {KEY}"}
needs_postgres = pytest.mark.skipif(
    not listening(POSTGRES), reason="PostgreSQL is not running on 127.0.0.1:5432"
)


@pytest.fixture()
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream("accounting").start()
    yield fake
    fake.stop()


@pytest.fixture()
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture()
def postgres() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for the test."""
    if not listening(POSTGRES):
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
    with fresh_postgres_database() as url:
        yield url


class Running:
    """A Gateway's processes with N auth replicas, each startable and killable."""

    def __init__(self, gateway: Gateway, auth_replicas: int = 1) -> None:
        self.gateway = gateway
        self.auth_addresses = [f"127.0.0.1:{free_port()}" for _ in range(auth_replicas)]
        gateway.env["AQUEDUCT_AUTH_ADDR"] = ",".join(self.auth_addresses)
        self.auth = [self.start_auth(i) for i in range(auth_replicas)]
        self.others = {name: gateway.start(name) for name in ("files", "inference", "edge")}
        self.base = f"http://127.0.0.1:{gateway.port}"
        for address in self.auth_addresses:
            wait_for(lambda a=address: serving(a), 60, f"auth on {address}")
        for name in ("files", "inference"):
            address = gateway.env[f"AQUEDUCT_{name.upper()}_ADDR"]
            wait_for(lambda a=address: serving(a), 60, name)
        wait_for(lambda: self.status("/v1/models", ADMIN) == 200, 30, "the edge")

    def start_auth(self, index: int) -> subprocess.Popen[bytes]:
        env = {**self.gateway.env, "AQUEDUCT_AUTH_ADDR": self.auth_addresses[index]}
        log = self.gateway.tmp_path / f"auth{index}-{time.monotonic_ns()}.log"
        return spawn(["-m", "services.auth"], env, log)

    def status(self, path: str, headers: dict[str, str], body: object = None) -> int:
        try:
            if body is None:
                return httpx.get(self.base + path, headers=headers, timeout=10).status_code
            return httpx.post(self.base + path, headers=headers, json=body, timeout=10).status_code
        except httpx.HTTPError:
            return 0

    def key(self, **limits: int) -> dict[str, str]:
        body = {"name": "k", **({"limits": limits} if limits else {})}
        created = httpx.post(f"{self.base}/v1/admin/keys", headers=ADMIN, json=body, timeout=10)
        assert created.status_code == 201, created.text
        return {"authorization": f"Bearer {created.json()['key']}"}

    def ledger_rows(self) -> int:
        answer = httpx.get(f"{self.base}/v1/admin/usage", headers=ADMIN, timeout=10)
        return sum(row["requests"] for row in answer.json()["data"])

    def limits_state(self) -> tuple[str, float]:
        """Redis as the edge reports it: /readyz's detail and its metric."""
        ready = httpx.get(f"{self.base}/readyz", timeout=10)
        assert ready.status_code == 200  # degraded, not out of rotation
        metrics = httpx.get(f"{self.base}/metrics", timeout=10).text
        line = 'aqueduct_dependency_up{dependency="auth.limits"} '
        value = next(float(x[len(line) :]) for x in metrics.splitlines() if x.startswith(line))
        return ready.json()["dependencies"]["auth.limits"], value

    def auth_logs(self) -> str:
        return "".join(p.read_text() for p in self.gateway.tmp_path.glob("auth*.log"))

    def stop(self) -> None:
        for process in (self.others["edge"], *self.auth, *self.others.values()):
            stop(process)


def load(running: Running, keys: list[dict[str, str]], statuses: list[int]) -> Callable[[], None]:
    """One client thread per key, sending until the returned stop() is called."""
    going = threading.Event()
    going.set()

    def client(headers: dict[str, str]) -> None:
        with httpx.Client(base_url=running.base, headers=headers, timeout=15) as http:
            deadline = time.monotonic() + 90  # bounded, whatever happens
            while going.is_set() and time.monotonic() < deadline:
                try:
                    statuses.append(http.post("/v1/chat/completions", json=CHAT).status_code)
                except httpx.HTTPError:
                    statuses.append(0)

    threads = [threading.Thread(target=client, args=(k,)) for k in keys]
    for thread in threads:
        thread.start()

    def halt() -> None:
        going.clear()
        for thread in threads:
            thread.join(30)

    return halt


def settle_and_count(running: Running, upstream: FakeUpstream) -> None:
    """Every answer the upstream served has exactly one ledger row."""
    served = upstream.completed
    wait_for(lambda: running.ledger_rows() >= served, 30, f"{served} usage rows")
    time.sleep(1.5)  # anything doubled would have arrived by now (settle retries ≤ 1 s apart)
    assert running.ledger_rows() == served


def test_a_redis_blip_gives_the_slot_back_and_answers_503_meanwhile(
    tmp_path: Path, upstream: FakeUpstream, redis: RedisServer
) -> None:
    """The issue's scenario: max_concurrent 1, a stream running, Redis stopped for
    2 s (the stream ends meanwhile, so its settle fails) and started again."""
    gateway = Gateway.on(tmp_path, upstream, {"AQUEDUCT_REDIS_URL": redis.url})
    running = Running(gateway)
    try:
        limited, unlimited = running.key(max_concurrent=1), running.key()
        upstream.default = Reply.stream(*["x"] * 5, delay_s=0.1)
        statuses: list[int] = []
        stream = threading.Thread(
            target=lambda: statuses.append(running.status("/v1/chat/completions", limited, CHAT))
        )
        stream.start()
        upstream.wait_for(lambda: upstream.active == 1, 10)
        down_at = time.monotonic()
        redis.stop()
        # Meanwhile: a limited key is refused 503 (never 500, never a 429 it did not
        # earn); a key without limits is served.
        refused = httpx.post(f"{running.base}/v1/chat/completions", headers=limited, json=CHAT)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "limits_unavailable"
        assert running.status("/v1/chat/completions", unlimited, CHAT) == 200
        stream.join(30)
        assert statuses == [200]  # it ended while Redis was down: its settle failed
        wait_for(lambda: running.limits_state() == ("NOT_SERVING", 0.0), 5, "readiness to say")
        time.sleep(max(0.0, 2.0 - (time.monotonic() - down_at)))
        redis.start()
        back_at = time.monotonic()
        upstream.default = Reply.stream("ok")
        after: list[int] = []  # 429 until the edge's settle retry lands, never 503 or 500
        wait_for(
            lambda: (
                after.append(running.status("/v1/chat/completions", limited, CHAT))
                or after[-1] == 200
            ),
            10,
            "the slot back",
        )
        assert set(after) <= {200, 429}, after  # pooled connections recovered unnoticed
        assert time.monotonic() - back_at < 5  # not the hour-long lease
        wait_for(lambda: running.limits_state() == ("SERVING", 1.0), 5, "readiness back")
        settle_and_count(running, upstream)
        logs = running.auth_logs()
        assert "Traceback" not in logs
        assert logs.count("redis unavailable") == 1  # one warning for the outage
    finally:
        running.stop()


def test_no_500_and_one_row_per_answer_through_a_redis_outage(
    tmp_path: Path, upstream: FakeUpstream, redis: RedisServer, postgres: str
) -> None:
    """Two auth replicas on PostgreSQL, keys with and without limits, Redis down for
    2 s under load: each answer served has one ledger row, none twice."""
    gateway = Gateway.on(
        tmp_path,
        upstream,
        {"AQUEDUCT_REDIS_URL": redis.url, "AQUEDUCT_DATABASE_URL": postgres},
    )
    running = Running(gateway, auth_replicas=2)
    statuses: list[int] = []
    try:
        keys = [running.key(rpm=100_000, max_concurrent=50) for _ in range(4)]
        keys += [running.key() for _ in range(4)]
        halt = load(running, keys, statuses)
        time.sleep(2)
        redis.blip(2.0)
        time.sleep(2)
        halt()
        assert set(statuses) <= {200, 503}, sorted(set(statuses))
        assert 503 in statuses  # the limited keys, while Redis was down
        assert statuses.count(200) == upstream.completed > 0
        settle_and_count(running, upstream)
        assert "Traceback" not in running.auth_logs()
    finally:
        running.stop()


def test_kill_9_of_an_auth_replica_under_load_loses_no_row(
    tmp_path: Path, upstream: FakeUpstream, redis: RedisServer, postgres: str
) -> None:
    """A settle auth acknowledged is committed: killing the replica that took it
    loses nothing, and what it had not acknowledged goes to the other one."""
    gateway = Gateway.on(
        tmp_path,
        upstream,
        {"AQUEDUCT_REDIS_URL": redis.url, "AQUEDUCT_DATABASE_URL": postgres},
    )
    running = Running(gateway, auth_replicas=2)
    statuses: list[int] = []
    try:
        keys = [running.key(rpm=100_000) for _ in range(10)] + [running.key() for _ in range(10)]
        halt = load(running, keys, statuses)
        time.sleep(3)
        os.kill(running.auth[0].pid, signal.SIGKILL)
        running.auth[0].wait(10)
        time.sleep(3)
        halt()
        served = upstream.completed
        assert served > 100
        assert statuses.count(200) == served
        settle_and_count(running, upstream)
    finally:
        running.stop()


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_four_replicas_starting_at_once_create_one_admin_key(
    tmp_path: Path, dialect: str, request: pytest.FixtureRequest
) -> None:
    database = (
        request.getfixturevalue("postgres")
        if dialect == "postgresql"
        else f"sqlite:///{tmp_path / 'aqueduct.db'}"
    )
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(4)]
    env = {"AQUEDUCT_DATA_DIR": str(tmp_path), "AQUEDUCT_DATABASE_URL": database}
    env["AQUEDUCT_BOOTSTRAP_KEY"] = ""  # unset: the first start makes one
    replicas = [
        spawn(
            ["-m", "services.auth"],
            {**env, "AQUEDUCT_AUTH_ADDR": address},
            tmp_path / f"auth{i}.log",
        )
        for i, address in enumerate(addresses)
    ]
    try:
        for address in addresses:
            wait_for(lambda a=address: serving(a), 90, f"auth on {address}")
        engine = sqlalchemy.create_engine(database)
        with engine.connect() as connection:
            hashes = connection.execute(
                sqlalchemy.text("SELECT secret_hash FROM api_keys WHERE admin")
            ).all()
        engine.dispose()
        secret = (tmp_path / "bootstrap-key").read_text().strip()
        assert [row[0] for row in hashes] == [hash_secret(secret)]
        printed = "".join((tmp_path / f"auth{i}.log").read_text() for i in range(4))
        assert printed.count("bootstrap admin key (shown once") == 1
    finally:
        for replica in replicas:
            stop(replica)


def test_a_decompression_bomb_is_a_502_with_memory_flat(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    """1 GiB of zeros in 1 MiB of gzip: refused past 64 MiB, the inference
    process's peak memory barely moves."""
    gateway = Gateway.on(tmp_path, upstream, {})
    processes = {name: gateway.start(name) for name in (*SERVICES, "edge")}
    base = f"http://127.0.0.1:{gateway.port}"
    try:
        for name in SERVICES:
            address = gateway.env[f"AQUEDUCT_{name.upper()}_ADDR"]
            wait_for(lambda a=address: serving(a), 60, name)
        wait_for(
            lambda: httpx.get(f"{base}/v1/models", headers=ADMIN).status_code == 200, 30, "edge"
        )
        assert (
            httpx.post(f"{base}/v1/chat/completions", headers=ADMIN, json=CHAT).status_code == 200
        )
        before = _peak_rss_mib(processes["inference"].pid)
        for _ in range(3):
            upstream.queue(Reply.bomb(1 << 30))
            answer = httpx.post(f"{base}/v1/chat/completions", headers=ADMIN, json=CHAT, timeout=60)
            assert answer.status_code == 502, answer.text
            assert answer.json()["error"]["code"] == "upstream_bad_response"
        growth = _peak_rss_mib(processes["inference"].pid) - before
        # The 64 MiB cap, once: a retained body (3 bombs, 3 x 64 MiB) fails this.
        assert growth < 100, f"inference peak RSS grew {growth:.0f} MiB"
    finally:
        for process in processes.values():
            stop(process)


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")
