"""Two inference workers over mutual TLS: the second hands the local model's
requests to the first as itself (identity `inference`), and an internal caller
with an API key is metered once, by the worker it reached: its limit admits
exactly what it allows, and each request leaves one ledger row."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from aqueduct.inference.v1 import inference_pb2, inference_pb2_grpc

from tests.certs import CertificateAuthority
from tests.integration.test_mtls import ADMIN, KEY, Plane, secure
from tests.processes import free_port, spawn, stop, wait_for

LOCAL_MODEL = "smollm2-135m-instruct"
ROUTE = "aqueduct.inference.v1.InferenceService/StreamChatCompletion"


class Workers:
    """Auth, files, inference-1 (runs the local model), inference-2 (forwards it)
    and an edge that knows both workers, each with its own certificate."""

    def __init__(self, tmp_path: Path) -> None:
        self.ca = CertificateAuthority(tmp_path / "pki")
        models = tmp_path / "models.yaml"
        models.write_text(f"models:\n  - name: {LOCAL_MODEL}\n    backend: local\n")
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.workers = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
        addresses = {
            "AQUEDUCT_AUTH_ADDR": f"127.0.0.1:{free_port()}",
            "AQUEDUCT_FILES_ADDR": f"127.0.0.1:{free_port()}",
            "AQUEDUCT_INFERENCE_ADDR": ",".join(self.workers),
        }
        (tmp_path / "data").mkdir()
        common = {
            "AQUEDUCT_DATA_DIR": str(tmp_path / "data"),
            "AQUEDUCT_MODELS_CONFIG": str(models),
            "AQUEDUCT_BOOTSTRAP_KEY": KEY,
            "AQUEDUCT_HTTP_PORT": str(self.port),
            "AQUEDUCT_LOCAL_THREADS": "1",
            **addresses,
        }
        children = [
            ("auth", "services.auth", {}),
            ("files", "services.files", {}),
            ("inference", "services.inference", {"AQUEDUCT_INFERENCE_ADDR": self.workers[0]}),
            (
                "inference",
                "services.inference",
                {
                    "AQUEDUCT_INFERENCE_ADDR": self.workers[1],
                    "AQUEDUCT_LOCAL_MODELS_ADDR": self.workers[0],
                },
            ),
            ("edge", "edge", {}),
        ]
        self.processes: list[subprocess.Popen[bytes]] = []
        for i, (identity, module, own) in enumerate(children):
            env = {**common, **self.ca.issue(identity).env(), **own}
            log = tmp_path / f"{i}-{identity}.log"
            self.processes.append(spawn(["-m", module], env, log))
        admin = self.ca.issue("admin")
        for address in self.workers:
            wait_for(lambda a=address: Plane.serving(a, admin), 90, f"{address} SERVING")

    def stop(self) -> None:
        for process in reversed(self.processes):
            stop(process)


@pytest.fixture()
def workers(tmp_path: Path) -> Iterator[Workers]:
    running = Workers(tmp_path)
    yield running
    running.stop()


def test_a_keyed_caller_of_the_forwarding_worker_is_metered_once(workers: Workers) -> None:
    def edge_up() -> bool:
        try:
            answer = httpx.get(f"{workers.base}/v1/models", headers=ADMIN, timeout=5)
        except httpx.HTTPError:
            return False
        return answer.status_code == 200

    wait_for(edge_up, 30, "the edge")
    created = httpx.post(
        f"{workers.base}/v1/admin/keys",
        headers=ADMIN,
        json={"name": "svc", "limits": {"rpm": 2}},
        timeout=10,
    ).json()
    keyed = (("authorization", f"Bearer {created['key']}"),)
    chat = inference_pb2.StreamChatCompletionRequest(
        model=LOCAL_MODEL,
        messages=[inference_pb2.ChatMessage(role="user", content="hi")],
        sampling=inference_pb2.SamplingParams(max_tokens=3),
    )
    with secure(workers.workers[1], workers.ca.issue("reporting")) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        summaries = [
            list(stub.StreamChatCompletion(chat, metadata=keyed, timeout=30))[-1].summary
            for _ in range(2)
        ]
        with pytest.raises(grpc.RpcError) as refused:
            list(stub.StreamChatCompletion(chat, metadata=keyed, timeout=30))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    assert [s.usage.completion_tokens for s in summaries] == [3, 3]

    def rows() -> list[dict[str, object]]:
        answer = httpx.get(
            f"{workers.base}/v1/admin/usage",
            params={"key_id": created["id"], "group_by": "route"},
            headers=ADMIN,
            timeout=10,
        )
        return answer.json()["data"]  # type: ignore[no-any-return]

    expected = [
        {
            "route": ROUTE,
            "requests": 2,
            "input_tokens": sum(s.usage.prompt_tokens for s in summaries),
            "output_tokens": 6,
            "errors": 0,
        }
    ]
    wait_for(lambda: rows() == expected, 10, "one ledger row per request")
