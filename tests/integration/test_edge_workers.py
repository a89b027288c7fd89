"""`make run` with several edge workers sharing the HTTP port (AQUEDUCT_EDGE_WORKERS,
SO_REUSEPORT): limits and revocation hold across workers, a killed worker is
restarted while the other serves, and each worker's metrics are its own.

Which worker answered a request is read from the workers' own metrics ports
(the supervisor prints them): every request goes on a fresh connection, so the
kernel spreads them over the workers."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fake_upstream import FakeUpstream, Reply
from tests.processes import Supervised, stop, supervisor, wait_for

ADMIN_KEY = "sk-aq-" + "w" * 40
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
MODEL = "fake"
CHAT = "/v1/chat/completions"
FRESH = 16  # fresh connections per batch: each worker gets some but with odds of 2 in 65536


def _supervisor(tmp_path: Path, upstream: FakeUpstream, **extra: str) -> Supervised:
    models = tmp_path / "models.yaml"
    models.write_text(
        f"models:\n  - name: {MODEL}\n    backend: openai\n"
        f'    upstreams: [{{url: "{upstream.url}"}}]\n'
    )
    env = {
        "AQUEDUCT_MODELS_CONFIG": str(models),
        "AQUEDUCT_BOOTSTRAP_KEY": ADMIN_KEY,
        "AQUEDUCT_EDGE_WORKERS": "2",
        **extra,
    }
    return supervisor(tmp_path, **env)


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream("workers").start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def gateway(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Supervised]:
    running = _supervisor(tmp_path_factory.mktemp("workers"), upstream)
    try:
        running.wait_ready()
        yield running
    finally:
        assert stop(running.process, 30) == 0, running.log.read_text()[-3000:]
    crashes = {x for x in running.log.read_text().splitlines() if "stopped unexpectedly" in x}
    assert crashes <= {  # only the worker the restart test killed
        "aqueduct: edge-1 stopped unexpectedly (signal 9); restarting it in 0.5 s."
    }


def _chat(base: str, key: str) -> int:
    """One chat request on a connection of its own (so the kernel picks a worker)."""
    answer = httpx.post(
        f"{base}{CHAT}",
        headers={"authorization": f"Bearer {key}"},
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        timeout=30,
    )
    return answer.status_code


def _in_parallel(base: str, key: str, count: int) -> list[int]:
    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda _: _chat(base, key), range(count)))


def _answered(url: str, status_class: str) -> float:
    """Chat requests a worker answered with this status class (its own counter)."""
    answer = httpx.get(url, timeout=10)
    assert answer.status_code == 200
    return sum(
        s.value
        for family in text_string_to_metric_families(answer.text)
        for s in family.samples
        if s.name == "aqueduct_requests_total"
        and s.labels["route"] == CHAT
        and s.labels["status_class"] == status_class
    )


def _rate_limited(url: str) -> float:
    answer = httpx.get(url, timeout=10)
    return sum(
        s.value
        for family in text_string_to_metric_families(answer.text)
        for s in family.samples
        if s.name == "aqueduct_rate_limited_total"
    )


def _create_key(base: str, **body: object) -> dict[str, str]:
    answer = httpx.post(f"{base}/v1/admin/keys", headers=ADMIN, json={"name": "w", **body})
    assert answer.status_code == 201, answer.text
    return answer.json()  # type: ignore[no-any-return]


WORKERS = ("edge-1", "edge-2")


def test_banner_lists_each_worker_with_its_pid_and_metrics(gateway: Supervised) -> None:
    pids = {gateway.pid(w) for w in WORKERS}
    assert len(pids) == 2 and all(Path(f"/proc/{pid}").exists() for pid in pids)
    for worker in WORKERS:
        assert f"http  {gateway.base}/v1  (pid " in gateway.banner(worker)
    urls = {gateway.metrics_url(w) for w in WORKERS}
    assert len(urls) == 2  # a port each: no worker's numbers stand for the total
    # On the shared port, /metrics would be whichever worker the connection reached.
    assert httpx.get(f"{gateway.base}/metrics").status_code == 404


def test_rpm_is_exact_across_workers(gateway: Supervised) -> None:
    rpm = 10
    key = _create_key(gateway.base, limits={"rpm": rpm})
    urls = [gateway.metrics_url(w) for w in WORKERS]
    before = [(_answered(u, "2xx"), _answered(u, "4xx"), _rate_limited(u)) for u in urls]
    started = time.monotonic()
    statuses = _in_parallel(gateway.base, key["key"], 2 * rpm)
    # The bucket refills rpm/60 a second: under 6 s, not one more request fits.
    assert time.monotonic() - started < 60 / rpm
    assert statuses.count(200) == rpm, statuses
    assert statuses.count(429) == rpm, statuses
    after = [(_answered(u, "2xx"), _answered(u, "4xx"), _rate_limited(u)) for u in urls]
    served = [a[0] - b[0] + a[1] - b[1] for a, b in zip(after, before, strict=True)]
    assert all(n > 0 for n in served), served  # both workers served some of them
    assert sum(served) == 2 * rpm
    # Each worker counts its own: together they are what the client saw.
    assert sum(a[0] - b[0] for a, b in zip(after, before, strict=True)) == rpm
    assert sum(a[2] - b[2] for a, b in zip(after, before, strict=True)) == rpm


def test_revocation_reaches_every_worker_within_a_second(gateway: Supervised) -> None:
    key = _create_key(gateway.base)
    urls = [gateway.metrics_url(w) for w in WORKERS]
    before = [_answered(u, "2xx") for u in urls]
    assert _in_parallel(gateway.base, key["key"], FRESH) == [200] * FRESH
    warm = [_answered(u, "2xx") - b for u, b in zip(urls, before, strict=True)]
    assert all(n > 0 for n in warm), warm  # both workers hold the key in their caches
    revoked = httpx.delete(f"{gateway.base}/v1/admin/keys/{key['id']}", headers=ADMIN)
    assert revoked.status_code == 200 and revoked.json()["revoked"] is True
    deadline = time.monotonic() + 1.0
    refused_before = [_answered(u, "4xx") for u in urls]
    time.sleep(max(0.0, deadline - time.monotonic()))
    assert _in_parallel(gateway.base, key["key"], FRESH) == [401] * FRESH
    refused = [_answered(u, "4xx") - b for u, b in zip(urls, refused_before, strict=True)]
    assert all(n > 0 for n in refused), refused  # every worker refused it
    assert sum(refused) == FRESH


def test_a_killed_worker_is_restarted_while_the_other_serves(gateway: Supervised) -> None:
    key = _create_key(gateway.base)
    killed, survivor = gateway.pid("edge-1"), gateway.metrics_url("edge-2")
    os.kill(killed, signal.SIGKILL)
    wait_for(lambda: _zombie_or_gone(killed), 10, "the killed worker to die")
    served = _answered(survivor, "2xx")
    assert _in_parallel(gateway.base, key["key"], FRESH) == [200] * FRESH
    assert _answered(survivor, "2xx") - served == FRESH  # all on the other worker
    wait_for(lambda: "edge-1 restarted (pid" in gateway.log.read_text(), 30, "the restart")
    assert "edge-1 stopped unexpectedly (signal 9); restarting it in 0.5 s." in (
        gateway.log.read_text()
    )
    restarted = gateway.pid("edge-1")
    assert restarted != killed
    assert gateway.process.poll() is None  # still supervising
    url = gateway.metrics_url("edge-1")  # the same port as before the crash

    def serves_again() -> bool:
        try:
            httpx.get(url, timeout=1)
        except httpx.HTTPError:
            return False
        assert _in_parallel(gateway.base, key["key"], FRESH) == [200] * FRESH
        return _answered(url, "2xx") > 0

    wait_for(serves_again, 30, "the restarted worker to serve")


def _zombie_or_gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_a_port_already_shared_stops_the_supervisor(tmp_path: Path, upstream: FakeUpstream) -> None:
    """A listener with SO_REUSEPORT on the port (another run's edge worker) would
    silently share it with these workers: the supervisor refuses to start."""
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    try:
        port = str(squatter.getsockname()[1])
        running = _supervisor(tmp_path, upstream, AQUEDUCT_HTTP_PORT=port)
        try:
            assert running.process.wait(30) == 2
        finally:
            stop(running.process)
    finally:
        squatter.close()
    assert f"127.0.0.1:{port} is in use" in running.log.read_text()
    assert "(pid " not in running.log.read_text()  # nothing was started


def _connections(pid: int, port: int) -> int:
    """Established TCP connections on local `port` that process `pid` holds open."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    found = 0
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, inode = fields[1], fields[3], fields[9]
        if state == "01" and int(local.rsplit(":", 1)[1], 16) == port and inode in inodes:
            found += 1
    return found


def test_ctrl_c_lets_every_workers_streams_finish_and_settle(tmp_path: Path) -> None:
    """Ctrl-C stops every edge worker first: the streams each was serving finish,
    and their settles reach auth before it stops."""
    fake = FakeUpstream("slow", default=Reply.stream(*["x"] * 20, delay_s=0.1)).start()
    running = _supervisor(tmp_path, fake)
    port = int(running.base.rsplit(":", 1)[1])
    finished: list[bool] = []

    def stream() -> None:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
        with httpx.stream(
            "POST", f"{running.base}{CHAT}", json=body, headers=ADMIN, timeout=30
        ) as answer:
            text = "".join(answer.iter_text())
        finished.append(text.rstrip().endswith("data: [DONE]"))

    try:
        running.wait_ready()
        threads = [threading.Thread(target=stream) for _ in range(FRESH)]
        for thread in threads:
            thread.start()
        fake.wait_for(lambda: fake.active == FRESH, 30)
        serving = [_connections(running.pid(w), port) for w in WORKERS]
        assert all(n > 0 for n in serving) and sum(serving) == FRESH, serving
        running.process.send_signal(signal.SIGINT)
        for thread in threads:
            thread.join(30)
        assert running.process.wait(60) == 0, running.log.read_text()[-3000:]
    finally:
        stop(running.process)
        fake.stop()
    assert finished == [True] * FRESH
    again = _supervisor(tmp_path, fake)
    try:
        wait_for(lambda: "Aqueduct is ready." in again.log.read_text(), 90, "the ready banner")
        usage = httpx.get(f"{again.base}/v1/admin/usage", headers=ADMIN, timeout=10)
        assert usage.status_code == 200, usage.text
        assert sum(row["requests"] for row in usage.json()["data"]) == FRESH
    finally:
        assert stop(again.process, 30) == 0


def test_one_worker_is_the_single_edge_bound_as_before(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    running = _supervisor(tmp_path, upstream, AQUEDUCT_EDGE_WORKERS="1")
    port = int(running.base.rsplit(":", 1)[1])
    try:
        running.wait_ready()
        assert "  edge       http  " in running.log.read_text()
        assert "edge-1" not in running.log.read_text()
        assert _chat(running.base, ADMIN_KEY) == 200
        assert httpx.get(f"{running.base}/metrics").status_code == 200  # on the HTTP port
        with socket.socket() as intruder:  # bound without SO_REUSEPORT: nobody may join
            intruder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            with pytest.raises(OSError):
                intruder.bind(("127.0.0.1", port))
    finally:
        assert stop(running.process, 30) == 0, running.log.read_text()[-3000:]
