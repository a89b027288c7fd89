"""The real entry points as separate processes: each service alone, the edge
failing closed, and the `make run` supervisor."""

from __future__ import annotations

import signal
import stat
from pathlib import Path

import grpc
import httpx
import openai
import pytest
from aqueduct.inference.v1 import inference_pb2 as pb
from aqueduct.inference.v1 import inference_pb2_grpc

from tests.processes import free_port, serving, spawn, stop, wait_for

MODEL = "smollm2-135m-instruct"


def test_inference_alone_answers_a_plain_grpc_streaming_call(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    process = spawn(
        ["-m", "services.inference"],
        {"AQUEDUCT_INFERENCE_ADDR": address},
        tmp_path / "inference.log",
    )
    try:
        wait_for(lambda: serving(address), 60, "inference SERVING")
        with grpc.insecure_channel(address) as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            stream = stub.StreamChatCompletion(
                pb.StreamChatCompletionRequest(
                    model=MODEL,
                    messages=[pb.ChatMessage(role="user", content="Hi!")],
                    sampling=pb.SamplingParams(max_tokens=5),
                ),
                timeout=30,
            )
            messages = list(stream)
        assert messages[-1].summary.usage.completion_tokens == 5
        assert any(m.HasField("deltas") for m in messages)
    finally:
        assert stop(process) == 0, (tmp_path / "inference.log").read_text()


def test_sigterm_during_a_stream_ends_it_cleanly(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    process = spawn(
        ["-m", "services.inference"],
        {"AQUEDUCT_INFERENCE_ADDR": address, "AQUEDUCT_SHUTDOWN_GRACE_S": "0.3"},
        tmp_path / "inference.log",
    )
    try:
        wait_for(lambda: serving(address), 60, "inference SERVING")
        with grpc.insecure_channel(address) as channel:
            stream = inference_pb2_grpc.InferenceServiceStub(channel).StreamChatCompletion(
                pb.StreamChatCompletionRequest(
                    model=MODEL,
                    messages=[
                        pb.ChatMessage(
                            role="user", content="Write a very long story about the sea."
                        )
                    ],
                    sampling=pb.SamplingParams(max_tokens=8000),
                ),
                timeout=120,
            )
            next(stream)
            process.send_signal(signal.SIGTERM)
            with pytest.raises(grpc.RpcError) as caught:  # cut after the grace, never hung
                for _ in stream:
                    pass
            assert caught.value.code() in (  # type: ignore[attr-defined]
                grpc.StatusCode.CANCELLED,
                grpc.StatusCode.UNAVAILABLE,
            )
        assert process.wait(10) == 0
    finally:
        stop(process)


def test_edge_fails_closed_when_auth_is_unreachable(tmp_path: Path) -> None:
    port = free_port()
    dead = f"127.0.0.1:{free_port()}"
    edge = spawn(
        ["-m", "edge"],
        {
            "AQUEDUCT_HTTP_PORT": str(port),
            "AQUEDUCT_AUTH_ADDR": dead,
            "AQUEDUCT_FILES_ADDR": dead,
            "AQUEDUCT_INFERENCE_ADDR": dead,
        },
        tmp_path / "edge.log",
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(f"{base}/healthz"), 30, "edge to listen")
        ready = httpx.get(f"{base}/readyz")
        assert ready.status_code == 503
        assert ready.json()["status"] == "unavailable"
        answer = httpx.post(
            f"{base}/v1/chat/completions",
            headers={"Authorization": "Bearer sk-aq-x"},
            json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
            timeout=30,
        )
        assert answer.status_code == 503
        assert answer.json()["error"]["code"] == "service_unavailable"
    finally:
        assert stop(edge) == 0


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _supervisor(tmp_path: Path) -> tuple[object, str, Path]:
    port = free_port()
    env = {
        "AQUEDUCT_DATA_DIR": str(tmp_path / "data"),
        "AQUEDUCT_HTTP_PORT": str(port),
        "AQUEDUCT_AUTH_ADDR": f"127.0.0.1:{free_port()}",
        "AQUEDUCT_FILES_ADDR": f"127.0.0.1:{free_port()}",
        "AQUEDUCT_INFERENCE_ADDR": f"127.0.0.1:{free_port()}",
    }
    log = tmp_path / "run.log"
    return spawn(["-m", "scripts.run"], env, log), f"http://127.0.0.1:{port}", log


def test_make_run_supervisor_serves_and_stops_cleanly(tmp_path: Path) -> None:
    process, base, log = _supervisor(tmp_path)
    try:
        wait_for(lambda: "Aqueduct is ready." in log.read_text(), 90, "the ready banner")
        key_file = tmp_path / "data" / "bootstrap-key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        key = key_file.read_text().strip()
        assert key.startswith("sk-aq-") and key in log.read_text()  # printed once, at creation
        assert "curl " in log.read_text()
        assert '"model": "smollm2-135m-instruct"' in log.read_text()  # the first served model
        client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
        reply = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=3
        )
        assert reply.choices[0].message.content
    finally:
        assert stop(process, 30) == 0, log.read_text()[-3000:]
    assert "stopped unexpectedly" not in log.read_text()


def test_supervisor_stops_everything_when_one_process_dies(tmp_path: Path) -> None:
    process, _base, log = _supervisor(tmp_path)
    try:
        wait_for(lambda: "Aqueduct is ready." in log.read_text(), 90, "the ready banner")
        line = next(x for x in log.read_text().splitlines() if x.strip().startswith("inference "))
        inference_pid = int(line.rsplit("pid ", 1)[1].rstrip(")"))
        import os

        os.kill(inference_pid, signal.SIGKILL)
        assert process.wait(30) == 1
    finally:
        stop(process)
    assert "inference stopped unexpectedly (signal 9)" in log.read_text()
    pids = [
        int(x.rsplit("pid ", 1)[1].rstrip(")"))
        for x in log.read_text().splitlines()
        if "(pid " in x
    ]
    assert all(not Path(f"/proc/{pid}").exists() for pid in pids)
