"""`make run`'s children: how many edge and inference workers, and what each is told."""

from __future__ import annotations

import http.server
import os
import socket
import threading

import pytest

from core.config import ConfigError
from scripts import run
from scripts.run import (
    MAX_DEFAULT_EDGE_WORKERS,
    MAX_DEFAULT_INFERENCE_WORKERS,
    edge_workers,
    inference_workers,
    plan,
)

BASE = {"AQUEDUCT_DATA_DIR": "./var", "AQUEDUCT_HTTP_HOST": "127.0.0.1"}


def test_one_worker_is_the_single_edge_of_old(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AQUEDUCT_METRICS_PORT", raising=False)
    plans = plan(dict(BASE), 1)
    assert list(plans) == ["auth", "files", "inference", "edge"]
    assert plans["edge"] == BASE  # no worker number, no metrics port: bound as ever


def test_several_workers_each_get_a_number_and_a_metrics_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AQUEDUCT_METRICS_PORT", raising=False)
    plans = plan(dict(BASE), 3)
    workers = [plans[f"edge-{i}"] for i in (1, 2, 3)]
    assert [w["AQUEDUCT_EDGE_WORKER"] for w in workers] == ["1", "2", "3"]
    ports = {w["AQUEDUCT_METRICS_PORT"] for w in workers}
    assert len(ports) == 3 and all(int(p) > 0 for p in ports)
    assert all(w["AQUEDUCT_METRICS_HOST"] == "127.0.0.1" for w in workers)
    assert "edge" not in plans and all(plans[s] == BASE for s in ("auth", "files", "inference"))


def test_a_taken_default_metrics_port_is_replaced_by_a_free_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AQUEDUCT_METRICS_PORT", raising=False)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        default = taken.getsockname()[1]
        monkeypatch.setattr(run, "EDGE_METRICS_BASE_PORT", default - 1)  # worker 1's
        port = plan(dict(BASE), 2)["edge-1"]["AQUEDUCT_METRICS_PORT"]
    assert port != str(default)


def test_the_operators_metrics_port_is_the_first_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AQUEDUCT_METRICS_PORT", "9300")
    plans = plan(dict(BASE), 2)
    assert plans["edge-1"]["AQUEDUCT_METRICS_PORT"] == "9300"
    assert plans["edge-2"]["AQUEDUCT_METRICS_PORT"] == "9301"


def test_the_default_follows_the_cpus_this_process_may_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AQUEDUCT_EDGE_WORKERS", raising=False)
    cpus = len(os.sched_getaffinity(0))
    assert edge_workers() == max(1, min(cpus // 2, MAX_DEFAULT_EDGE_WORKERS))
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {1})  # `taskset -c 1`
    assert edge_workers() == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3})
    assert edge_workers() == 2  # one per two CPUs: auth and inference need the rest
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(64)))
    assert edge_workers() == MAX_DEFAULT_EDGE_WORKERS
    monkeypatch.setenv("AQUEDUCT_EDGE_WORKERS", "6")
    assert edge_workers() == 6


@pytest.mark.parametrize("raw", ["0", "two", "-1"])
def test_a_bad_worker_count_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, raw: str
) -> None:
    monkeypatch.setenv("AQUEDUCT_EDGE_WORKERS", raw)
    with pytest.raises(ConfigError, match="AQUEDUCT_EDGE_WORKERS"):
        edge_workers()


INFERENCE = {
    **BASE,
    "AQUEDUCT_INFERENCE_ADDR": "127.0.0.1:0",  # replaced per worker below
    "AQUEDUCT_INFERENCE_METRICS_ADDR": "127.0.0.1:0",
}


def _free_addresses() -> dict[str, str]:
    ports = []
    for _ in range(2):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            ports.append(probe.getsockname()[1])
    return {
        **INFERENCE,
        "AQUEDUCT_INFERENCE_ADDR": f"127.0.0.1:{ports[0]}",
        "AQUEDUCT_INFERENCE_METRICS_ADDR": f"127.0.0.1:{ports[1]}",
    }


def test_one_inference_worker_is_the_single_inference_of_old() -> None:
    env = _free_addresses()
    plans = plan(env, 1, 1)
    assert list(plans) == ["auth", "files", "inference", "edge"]
    assert all(p == env for p in plans.values())


def test_several_inference_workers_get_ports_of_their_own_and_the_edge_all_of_them() -> None:
    env = _free_addresses()
    plans = plan(env, 2, 3)
    names = [n for n in plans if n.startswith("inference")]
    assert names == ["inference-1", "inference-2", "inference-3"]
    workers = [plans[n] for n in names]
    grpc = [w["AQUEDUCT_INFERENCE_ADDR"] for w in workers]
    metrics = [w["AQUEDUCT_INFERENCE_METRICS_ADDR"] for w in workers]
    assert grpc[0] == env["AQUEDUCT_INFERENCE_ADDR"]  # the first keeps the configured one
    assert metrics[0] == env["AQUEDUCT_INFERENCE_METRICS_ADDR"]
    assert len(set(grpc)) == 3 and len(set(metrics)) == 3 and not set(grpc) & set(metrics)
    # Only the first runs the local models; the others forward to it.
    assert "AQUEDUCT_LOCAL_MODELS_ADDR" not in workers[0]
    assert [w["AQUEDUCT_LOCAL_MODELS_ADDR"] for w in workers[1:]] == [grpc[0], grpc[0]]
    # Every client of inference (each edge worker) gets the whole list.
    for client in ("edge-1", "edge-2", "auth", "files"):
        assert plans[client]["AQUEDUCT_INFERENCE_ADDR"] == ",".join(grpc)


def test_the_operators_local_models_process_is_kept() -> None:
    env = {**_free_addresses(), "AQUEDUCT_LOCAL_MODELS_ADDR": "10.0.0.9:7000"}
    plans = plan(env, 1, 2)
    assert plans["inference-1"]["AQUEDUCT_LOCAL_MODELS_ADDR"] == "10.0.0.9:7000"
    assert plans["inference-2"]["AQUEDUCT_LOCAL_MODELS_ADDR"] == "10.0.0.9:7000"


def test_a_replica_list_with_several_inference_workers_is_a_configuration_error() -> None:
    env = {**_free_addresses(), "AQUEDUCT_INFERENCE_ADDR": "127.0.0.1:1,127.0.0.1:2"}
    with pytest.raises(ConfigError, match="AQUEDUCT_INFERENCE_ADDR"):
        plan(env, 1, 2)
    assert plan(env, 1, 1)["inference"] == env  # one worker: as ever


def test_inference_workers_default_like_the_edges(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AQUEDUCT_INFERENCE_WORKERS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1})  # this 2-CPU machine
    assert inference_workers() == 1  # nothing changes by default here
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3})
    assert inference_workers() == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(64)))
    assert inference_workers() == MAX_DEFAULT_INFERENCE_WORKERS
    monkeypatch.setenv("AQUEDUCT_INFERENCE_WORKERS", "6")
    assert inference_workers() == 6
    for raw in ("0", "many"):
        monkeypatch.setenv("AQUEDUCT_INFERENCE_WORKERS", raw)
        with pytest.raises(ConfigError, match="AQUEDUCT_INFERENCE_WORKERS"):
            inference_workers()


def test_a_worker_never_gets_a_port_planned_for_another_child() -> None:
    env = _free_addresses()
    grpc_port = int(env["AQUEDUCT_INFERENCE_ADDR"].rpartition(":")[2])
    # The next port, where worker 2 would go, is the metrics port (not bound yet).
    env["AQUEDUCT_INFERENCE_METRICS_ADDR"] = f"127.0.0.1:{grpc_port + 1}"
    plans = plan(env, 1, 2)
    ports = [
        plans[w][v].rpartition(":")[2]
        for w in ("inference-1", "inference-2")
        for v in ("AQUEDUCT_INFERENCE_ADDR", "AQUEDUCT_INFERENCE_METRICS_ADDR")
    ]
    assert len(set(ports)) == 4, ports


def test_http_get_returns_the_body_of_a_200_only() -> None:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ok = self.path == "/ok" and self.headers["Authorization"] == "Bearer k"
            body = b'{"data": [{"id": "m"}]}' if ok else b"no"
            self.send_response(200 if ok else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert (
            run.http_get(f"{base}/ok", {"Authorization": "Bearer k"}) == b'{"data": [{"id": "m"}]}'
        )
        assert run.first_model(base, "k") == run.DEFAULT_MODEL  # its /v1/models: 404
        assert run.http_get(f"{base}/ok") is None  # 404
    finally:
        server.shutdown()
        server.server_close()
    assert run.http_get(f"{base}/ok") is None  # nothing listens
