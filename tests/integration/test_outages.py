"""Outages and restarts: a service down for seconds or half a minute is served
again within 2 s of its return (gRPC's default reconnect backoff made it 9-17 s
after 30 s); a service stopped under load drains and loses no usage row."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.fake_upstream import FakeUpstream, Reply
from tests.processes import free_port, serving, spawn, stop, wait_for
from tests.services_available import REDIS, REDIS_URL, listening

# Outage lengths tried; AQUEDUCT_TEST_OUTAGE_S=90 tries that one alone (longer
# outages behave as 30 s: the reconnect backoff is at its 1 s cap by then).
OUTAGES_S = (
    [float(os.environ["AQUEDUCT_TEST_OUTAGE_S"])]
    if "AQUEDUCT_TEST_OUTAGE_S" in os.environ
    else [3.0, 30.0]
)
KEY = "sk-aq-" + "o" * 40
SERVICES = ("auth", "files", "inference")


@pytest.fixture()
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream("outage").start()
    yield fake
    fake.stop()


@dataclass
class Gateway:
    """The four processes on their own ports, each of them started again at will."""

    tmp_path: Path
    env: dict[str, str]
    port: int

    @classmethod
    def on(cls, tmp_path: Path, upstream: FakeUpstream, extra: dict[str, str]) -> Gateway:
        models = tmp_path / "models.yaml"
        models.write_text(
            "models:\n  - name: fake\n    backend: openai\n"
            f"    upstreams: [{{url: '{upstream.url}'}}]\n"
        )
        port = free_port()
        env = {
            "AQUEDUCT_DATA_DIR": str(tmp_path / "data"),
            "AQUEDUCT_MODELS_CONFIG": str(models),
            "AQUEDUCT_BOOTSTRAP_KEY": KEY,
            "AQUEDUCT_HTTP_PORT": str(port),
            **extra,
            **{f"AQUEDUCT_{s.upper()}_ADDR": f"127.0.0.1:{free_port()}" for s in SERVICES},
        }
        (tmp_path / "data").mkdir()
        return cls(tmp_path, env, port)

    def start(self, name: str) -> subprocess.Popen[bytes]:
        module = "edge" if name == "edge" else f"services.{name}"
        log = self.tmp_path / f"{name}-{time.monotonic_ns()}.log"
        return spawn(["-m", module], self.env, log)


@pytest.mark.parametrize("outage_s", OUTAGES_S)
def test_each_service_back_after_an_outage_serves_within_2_s(
    tmp_path: Path, upstream: FakeUpstream, outage_s: float
) -> None:
    gateway = Gateway.on(tmp_path, upstream, {"AQUEDUCT_SHUTDOWN_GRACE_S": "0.5"})
    env, port, start = gateway.env, gateway.port, gateway.start

    services = {name: start(name) for name in SERVICES}
    edge = start("edge")
    base = f"http://127.0.0.1:{port}"
    headers = {"authorization": f"Bearer {KEY}"}
    chat = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}

    def chat_ok() -> bool:
        return _status(f"{base}/v1/chat/completions", headers, chat) == 200

    def files_ok() -> bool:
        return _status(f"{base}/v1/files", headers) == 200

    try:
        for name in SERVICES:
            wait_for(lambda n=name: serving(env[f"AQUEDUCT_{n.upper()}_ADDR"]), 60, f"{name}")
        wait_for(lambda: chat_ok() and files_ok(), 30, "the gateway to serve")
        for name in SERVICES:
            assert stop(services[name]) == 0
        time.sleep(outage_s)
        assert not chat_ok() and not files_ok()
        services = {name: start(name) for name in SERVICES}
        back: dict[str, float] = {}  # when each was first seen serving again
        deadline = time.monotonic() + 60
        while len(back) < len(SERVICES) and time.monotonic() < deadline:
            for name in SERVICES:
                if name not in back and serving(env[f"AQUEDUCT_{name.upper()}_ADDR"]):
                    back[name] = time.monotonic()
            time.sleep(0.02)
        assert len(back) == len(SERVICES), f"only {sorted(back)} came back"
        wait_for(chat_ok, 10, "a chat answer")
        chat_after = time.monotonic() - max(back["auth"], back["inference"])
        wait_for(files_ok, 10, "a files answer")
        files_after = time.monotonic() - max(back["auth"], back["files"])
        print(f"after a {outage_s:g} s outage: chat {chat_after:.2f} s, files {files_after:.2f} s")
        assert chat_after <= 2.0 and files_after <= 2.0, (chat_after, files_after)
    finally:
        for process in (edge, *services.values()):
            stop(process)


def _status(url: str, headers: dict[str, str], body: object = None) -> int:
    try:
        if body is None:
            return httpx.get(url, headers=headers, timeout=5).status_code
        return httpx.post(url, headers=headers, json=body, timeout=5).status_code
    except httpx.HTTPError:
        return 0


def test_a_clean_auth_restart_under_load_loses_no_usage_row(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    """20 clients keep sending while auth restarts: every answer the upstream gave
    has its ledger row (the edge keeps the settles auth could not take)."""
    gateway = Gateway.on(tmp_path, upstream, {})
    env, port, start = gateway.env, gateway.port, gateway.start

    processes = {name: start(name) for name in (*SERVICES, "edge")}
    base = f"http://127.0.0.1:{port}"
    headers = {"authorization": f"Bearer {KEY}"}
    chat = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    statuses: list[int] = []
    running = threading.Event()
    running.set()

    def client() -> None:
        with httpx.Client(base_url=base, headers=headers, timeout=10) as http:
            deadline = time.monotonic() + 60  # bounded, whatever happens
            while running.is_set() and time.monotonic() < deadline:
                try:
                    statuses.append(http.post("/v1/chat/completions", json=chat).status_code)
                except httpx.HTTPError:
                    statuses.append(0)

    try:
        for name in SERVICES:
            wait_for(lambda n=name: serving(env[f"AQUEDUCT_{n.upper()}_ADDR"]), 60, f"{name}")
        wait_for(lambda: _status(f"{base}/v1/models", headers) == 200, 30, "the edge")
        clients = [threading.Thread(target=client) for _ in range(20)]
        for thread in clients:
            thread.start()
        time.sleep(2)
        assert stop(processes["auth"]) == 0
        processes["auth"] = start("auth")
        wait_for(lambda: serving(env["AQUEDUCT_AUTH_ADDR"]), 60, "auth back")
        time.sleep(2)
        running.clear()
        for thread in clients:
            thread.join(30)
        served = upstream.completed
        assert statuses.count(200) == served > 0

        def rows() -> int:
            answer = httpx.get(f"{base}/v1/admin/usage", headers=headers, timeout=10).json()
            return sum(row["requests"] for row in answer["data"])

        wait_for(lambda: rows() >= served, 20, f"{served} usage rows")
        assert rows() == served
    finally:
        for process in processes.values():
            stop(process)


def test_auth_stopped_under_load_drains_in_moments_and_takes_every_settle_meanwhile(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    """SIGTERM while the edge watches key events and 20 clients keep sending: auth
    ends the watch at once instead of waiting its 20 s grace for it, refuses new
    work, and takes the settles of the requests already admitted until none is
    left: nothing waits at the edge, and every answer has its row."""
    upstream.default = Reply.stream("a", "b", delay_s=0.05)
    gateway = Gateway.on(tmp_path, upstream, {"AQUEDUCT_SHUTDOWN_GRACE_S": "20"})
    env, port, start = gateway.env, gateway.port, gateway.start

    processes = {name: start(name) for name in (*SERVICES, "edge")}
    base = f"http://127.0.0.1:{port}"
    chat = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}
    answers: list[tuple[int, str]] = []  # status, error code
    running = threading.Event()
    running.set()

    def client(key: str) -> None:
        headers = {"authorization": f"Bearer {key}"}
        with httpx.Client(base_url=base, headers=headers, timeout=10) as http:
            deadline = time.monotonic() + 60  # bounded, whatever happens
            while running.is_set() and time.monotonic() < deadline:
                try:
                    answer = http.post("/v1/chat/completions", json=chat)
                except httpx.HTTPError:
                    answers.append((0, ""))
                    continue
                code = answer.json()["error"]["code"] if answer.status_code != 200 else ""
                answers.append((answer.status_code, code))

    try:
        for name in SERVICES:
            wait_for(lambda n=name: serving(env[f"AQUEDUCT_{n.upper()}_ADDR"]), 60, f"{name}")
        admin = {"authorization": f"Bearer {KEY}"}
        wait_for(lambda: _status(f"{base}/v1/models", admin) == 200, 30, "the edge")
        created = httpx.post(  # a key with a limit: each request reserves, then settles
            f"{base}/v1/admin/keys",
            headers=admin,
            json={"name": "drain", "limits": {"max_concurrent": 1000}},
            timeout=10,
        )
        assert created.status_code == 201, created.text
        clients = [
            threading.Thread(target=client, args=(created.json()["key"],)) for _ in range(20)
        ]
        for thread in clients:
            thread.start()
        wait_for(lambda: len(answers) >= 100, 30, "answers under load")
        processes["auth"].send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        assert processes["auth"].wait(30) == 0
        drained_s = time.monotonic() - signalled
        running.clear()
        for thread in clients:
            thread.join(30)
        print(f"auth drained in {drained_s:.2f} s under load ({len(answers)} answers)")
        assert drained_s < 8, drained_s  # its grace is 20 s
        assert {status for status, _ in answers} <= {200, 503}, answers
        assert ("503", "shutting_down") in {(str(s), c) for s, c in answers}
        assert _settles_pending(base) == 0  # the draining auth took every one

        served = upstream.completed
        assert [s for s, _ in answers].count(200) == served > 0
        processes["auth"] = start("auth")
        wait_for(lambda: serving(env["AQUEDUCT_AUTH_ADDR"]), 60, "auth back")

        def rows() -> int:  # -1 until the edge is through to the new auth
            answer = httpx.get(f"{base}/v1/admin/usage", headers=admin, timeout=10)
            if answer.status_code != 200:
                return -1
            return sum(row["requests"] for row in answer.json()["data"])

        wait_for(lambda: rows() >= served, 20, f"{served} usage rows")
        assert rows() == served
    finally:
        for process in processes.values():
            stop(process)


def test_inference_stopped_mid_stream_finishes_it_refuses_new_ones_and_exits_right_after(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    """SIGTERM with a stream running and the edge's idle prepared calls open: the
    stream ends in full, a new request is told to come back (503 shutting_down,
    Retry-After), and inference exits once the stream is done, not after its grace."""
    gateway = Gateway.on(tmp_path, upstream, {"AQUEDUCT_SHUTDOWN_GRACE_S": "30"})
    env, port, start = gateway.env, gateway.port, gateway.start
    processes = {name: start(name) for name in (*SERVICES, "edge")}
    base = f"http://127.0.0.1:{port}"
    headers = {"authorization": f"Bearer {KEY}"}
    chat = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    streamed: list[str] = []

    def stream() -> None:
        body = {**chat, "stream": True}
        with httpx.stream(
            "POST", f"{base}/v1/chat/completions", json=body, headers=headers, timeout=30
        ) as answer:
            streamed.append("".join(answer.iter_text()))

    try:
        for name in SERVICES:
            wait_for(lambda n=name: serving(env[f"AQUEDUCT_{n.upper()}_ADDR"]), 60, f"{name}")
        url = f"{base}/v1/chat/completions"
        wait_for(lambda: _status(url, headers, chat) == 200, 30, "a chat answer")
        # Its end left a prepared call open at the edge: idle, not work.
        upstream.default = Reply.stream(*["x"] * 30, delay_s=0.1)
        running = threading.Thread(target=stream)
        running.start()
        upstream.wait_for(lambda: upstream.active == 1, 10)
        processes["inference"].send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        refused: list[httpx.Response] = []

        def refused_now() -> bool:
            answer = httpx.post(url, headers=headers, json=chat, timeout=10)
            if answer.status_code == 503:
                refused.append(answer)
            return bool(refused)

        wait_for(refused_now, 5, "a new request refused")
        assert refused[0].json()["error"]["code"] == "shutting_down", refused[0].text
        assert refused[0].headers["retry-after"] == "1"
        assert processes["inference"].wait(30) == 0
        took_s = time.monotonic() - signalled
        running.join(10)
        assert streamed and streamed[0].rstrip().endswith("data: [DONE]"), streamed
        assert streamed[0].count('"content":"x"') == 30
        print(f"inference drained in {took_s:.2f} s with a 3 s stream running")
        assert took_s < 15, took_s  # the stream's 3 s and a moment, not the 30 s grace
    finally:
        for process in processes.values():
            stop(process)


def _settles_pending(base: str) -> float:
    for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines():
        if line.startswith("aqueduct_settles_pending "):
            return float(line.split()[1])
    raise AssertionError("no aqueduct_settles_pending in /metrics")


@pytest.mark.skipif(not listening(REDIS), reason="Redis is not running on 127.0.0.1:6379")
def test_redis_slots_come_back_after_a_clean_auth_restart(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    """Requests that end while auth is down give their concurrency slots back once
    it is up again; requests still running keep theirs exactly that long."""
    upstream.default = Reply.stream(*["x"] * 15, delay_s=0.1)
    gateway = Gateway.on(tmp_path, upstream, {"AQUEDUCT_REDIS_URL": REDIS_URL})
    env, port, start = gateway.env, gateway.port, gateway.start

    processes = {name: start(name) for name in (*SERVICES, "edge")}
    base = f"http://127.0.0.1:{port}"
    chat = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    try:
        for name in SERVICES:
            wait_for(lambda n=name: serving(env[f"AQUEDUCT_{n.upper()}_ADDR"]), 60, f"{name}")
        admin = {"authorization": f"Bearer {KEY}"}
        wait_for(lambda: _status(f"{base}/v1/models", admin) == 200, 30, "the edge")
        created = httpx.post(
            f"{base}/v1/admin/keys",
            headers=admin,
            json={"name": "slots", "limits": {"max_concurrent": 3}},
            timeout=10,
        )
        assert created.status_code == 201, created.text
        headers = {"authorization": f"Bearer {created.json()['key']}"}

        def streams(count: int) -> list[threading.Thread]:
            def one() -> None:
                with httpx.stream(
                    "POST", f"{base}/v1/chat/completions", json=chat, headers=headers, timeout=30
                ) as answer:
                    statuses.append(answer.status_code)
                    answer.read()

            threads = [threading.Thread(target=one) for _ in range(count)]
            for thread in threads:
                thread.start()
            return threads

        statuses: list[int] = []
        running = streams(3)
        upstream.wait_for(lambda: upstream.active == 3, 10)
        assert stop(processes["auth"]) == 0  # a clean restart, with 3 slots taken
        for thread in running:
            thread.join(30)  # they end while auth is down: their settles wait at the edge
        assert statuses == [200, 200, 200]
        processes["auth"] = start("auth")
        wait_for(lambda: serving(env["AQUEDUCT_AUTH_ADDR"]), 60, "auth back")
        wait_for(lambda: _status(f"{base}/v1/models", headers) == 200, 10, "the key verified")
        time.sleep(2.0)  # the settles' retry backoff is at most 1 s
        statuses.clear()
        running = streams(3)
        upstream.wait_for(lambda: upstream.active == 3, 10)
        fourth = httpx.post(f"{base}/v1/chat/completions", json=chat, headers=headers, timeout=10)
        assert fourth.status_code == 429, fourth.text  # the three running hold their slots
        assert fourth.json()["error"]["code"] == "rate_limited"
        for thread in running:
            thread.join(30)
        assert statuses == [200, 200, 200]
    finally:
        for process in processes.values():
            stop(process)
