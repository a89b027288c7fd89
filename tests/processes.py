"""Helpers for tests that run Aqueduct's real entry points as OS processes."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import openai
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def hanging_port() -> Iterator[int]:
    """A port on 127.0.0.1 where a TCP connect hangs: its listener never accepts
    and its accept queue is full, so the kernel drops new SYNs (no reset, no answer)."""
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        address = listener.getsockname()
        for _ in range(16):  # Linux queues backlog + 1 connections; allow for more
            filler = socket.socket()
            fillers.append(filler)
            filler.settimeout(0.1)  # a loopback connect that completes does so at once
            try:
                filler.connect(address)
            except TimeoutError:
                break  # the queue is full: the next connect hangs too
            except ConnectionError as error:
                pytest.skip(f"a full accept queue refuses connects here ({error!r})")
        else:
            pytest.skip("the accept queue of a 127.0.0.1 listener never filled up")
        yield address[1]
    finally:
        for sock in (*fillers, listener):
            sock.close()


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, *args], cwd=REPO, env=full_env, stdout=out, stderr=subprocess.STDOUT
        )


def wait_for(
    condition: Callable[[], bool], timeout: float, what: str, log: Path | None = None
) -> None:
    """Poll until condition() holds; on timeout fail, with the tail of `log` if given
    (a process that never got ready says why there)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    tail = f"\n--- {log.name} (tail) ---\n{log.read_text()[-4000:]}" if log else ""
    raise AssertionError(f"timed out after {timeout} s waiting for {what}{tail}")


def stop(process: subprocess.Popen[bytes], timeout: float = 15) -> int:
    if process.poll() is None:
        process.terminate()
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(f"{process.args} did not stop within {timeout} s of SIGTERM") from None


def serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1
            )
        except grpc.RpcError:
            return False
    return answer.status == health_pb2.HealthCheckResponse.SERVING


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """A process's resident memory (or another /proc/<pid>/status size) in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for pid {pid}")


@contextlib.contextmanager
def edge_process(tmp_path: Path, bootstrap_key: str, **env: str) -> Iterator[tuple[str, int]]:
    """The edge as its own OS process (`python -m edge`), with auth and files as
    processes too (inference is left out: nothing listens at its address).
    Yields the edge's base URL and pid, for tests that watch its memory or sockets."""
    port = free_port()
    common = {
        "AQUEDUCT_DATA_DIR": str(tmp_path / "data"),
        "AQUEDUCT_BOOTSTRAP_KEY": bootstrap_key,
        "AQUEDUCT_HTTP_PORT": str(port),
        **{f"AQUEDUCT_{s}_ADDR": f"127.0.0.1:{free_port()}" for s in ("AUTH", "FILES")},
        "AQUEDUCT_INFERENCE_ADDR": f"127.0.0.1:{free_port()}",
        **env,
    }
    (tmp_path / "data").mkdir(exist_ok=True)
    processes = []
    try:
        for name in ("auth", "files"):
            processes.append(spawn(["-m", f"services.{name}"], common, tmp_path / f"{name}.log"))
            address = common[f"AQUEDUCT_{name.upper()}_ADDR"]
            wait_for(lambda address=address: serving(address), 60, f"{name} SERVING")
        edge = spawn(["-m", "edge"], common, tmp_path / "edge.log")
        processes.append(edge)

        def listening() -> bool:
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", port)) == 0

        wait_for(listening, 30, "the edge to listen")
        yield f"http://127.0.0.1:{port}", edge.pid
    finally:
        for process in reversed(processes):
            stop(process)


@dataclass
class Supervised:
    """`python -m scripts.run` started by a test: its process, base URL and log."""

    process: subprocess.Popen[bytes]
    base: str
    log: Path

    def wait_ready(self, timeout: float = 90) -> None:
        wait_for(
            lambda: "Aqueduct is ready." in self.log.read_text(),
            timeout,
            "the ready banner",
            self.log,
        )

    def banner(self, worker: str) -> str:
        """The ready banner's line for one worker (`edge-1`, `inference-2`, `auth`)."""
        lines = [x for x in self.log.read_text().splitlines() if f"  {worker} " in x]
        assert lines, self.log.read_text()[-3000:]
        return lines[-1]

    def pid(self, worker: str) -> int:
        """The newest pid the supervisor printed for a child (banner or restart)."""
        lines = [
            x
            for x in self.log.read_text().splitlines()
            if "(pid " in x and f" {worker} " in f" {x} "
        ]
        return int(lines[-1].rsplit("pid ", 1)[1].split(")")[0])

    def pids(self) -> set[int]:
        """Every pid the supervisor printed."""
        return {
            int(x.rsplit("pid ", 1)[1].split(")")[0])
            for x in self.log.read_text().splitlines()
            if "(pid " in x
        }

    def grpc_address(self, worker: str) -> str:
        return self.banner(worker).split(" grpc  ", 1)[1].split()[0]

    def metrics_url(self, worker: str) -> str:
        return self.banner(worker).rsplit("metrics ", 1)[1].strip()

    def client(self, key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.base}/v1", api_key=key, max_retries=0, timeout=60)

    def metrics(self, worker: str) -> list[tuple[str, dict[str, str], float]]:
        """Every sample a worker's metrics address serves: (name, labels, value)."""
        answer = httpx.get(self.metrics_url(worker), timeout=10)
        assert answer.status_code == 200
        return [
            (s.name, s.labels, s.value)
            for family in text_string_to_metric_families(answer.text)
            for s in family.samples
        ]


def supervisor(tmp_path: Path, **extra: str) -> Supervised:
    """Start `make run`'s supervisor on free ports with its data in `tmp_path`."""
    port = free_port()
    env = {
        "AQUEDUCT_DATA_DIR": str(tmp_path / "data"),
        "AQUEDUCT_HTTP_PORT": str(port),
        "AQUEDUCT_AUTH_ADDR": f"127.0.0.1:{free_port()}",
        "AQUEDUCT_FILES_ADDR": f"127.0.0.1:{free_port()}",
        "AQUEDUCT_INFERENCE_ADDR": f"127.0.0.1:{free_port()}",
        **extra,
    }
    log = tmp_path / "run.log"
    return Supervised(spawn(["-m", "scripts.run"], env, log), f"http://127.0.0.1:{port}", log)
