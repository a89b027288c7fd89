"""The real entry points as separate processes: each service alone, the edge
failing closed, and the `make run` supervisor."""

from __future__ import annotations

import os
import signal
import stat
import threading
from pathlib import Path

import grpc
import httpx
import openai
import pytest
from aqueduct.inference.v1 import inference_pb2 as pb
from aqueduct.inference.v1 import inference_pb2_grpc

from tests.fake_upstream import FakeUpstream, Reply
from tests.processes import free_port, serving, spawn, stop, supervisor, wait_for

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
                    sampling=pb.SamplingParams(max_tokens=5, temperature=0),
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


def _gone(pids: set[int]) -> bool:
    return all(not Path(f"/proc/{pid}").exists() for pid in pids)


def test_make_run_supervisor_serves_and_stops_cleanly(tmp_path: Path) -> None:
    gateway = supervisor(tmp_path)
    try:
        gateway.wait_ready()
        key_file = tmp_path / "data" / "bootstrap-key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        key = key_file.read_text().strip()
        assert (
            key.startswith("sk-aq-") and key in gateway.log.read_text()
        )  # printed once, at creation
        assert "curl " in gateway.log.read_text()
        assert (
            '"model": "smollm2-135m-instruct"' in gateway.log.read_text()
        )  # the first served model
        client = openai.OpenAI(base_url=f"{gateway.base}/v1", api_key=key, max_retries=0)
        reply = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=3
        )
        assert reply.choices[0].message.content
        for service in ("auth", "files", "inference"):  # each serves its own metrics
            banner = next(x for x in gateway.log.read_text().splitlines() if f"  {service} " in x)
            scraped = httpx.get(banner.rsplit("metrics ", 1)[1].strip(), timeout=10)
            assert scraped.status_code == 200 and "grpc_server_handled_total" in scraped.text
    finally:
        assert stop(gateway.process, 30) == 0, gateway.log.read_text()[-3000:]
    assert "stopped unexpectedly" not in gateway.log.read_text()


def test_supervisor_restarts_a_killed_child_and_the_gateway_serves_again(tmp_path: Path) -> None:
    gateway = supervisor(tmp_path)
    try:
        gateway.wait_ready()
        key = (tmp_path / "data" / "bootstrap-key").read_text().strip()
        os.kill(gateway.pid("inference"), signal.SIGKILL)
        wait_for(lambda: "inference restarted (pid" in gateway.log.read_text(), 30, "the restart")
        assert "inference stopped unexpectedly (signal 9); restarting it in 0.5 s." in (
            gateway.log.read_text()
        )
        client = openai.OpenAI(base_url=f"{gateway.base}/v1", api_key=key, max_retries=0)

        def answers() -> bool:
            try:
                client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
                )
            except openai.APIError:
                return False
            return True

        wait_for(answers, 60, "a chat answer from the restarted inference")
        assert gateway.process.poll() is None  # still supervising
    finally:
        assert stop(gateway.process, 30) == 0, gateway.log.read_text()[-3000:]
    assert _gone(gateway.pids())


def test_children_stop_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    gateway = supervisor(tmp_path)
    try:
        gateway.wait_ready()
        gateway.process.kill()
        gateway.process.wait()
        wait_for(lambda: _gone(gateway.pids()), 30, "every child to exit")
    finally:
        stop(gateway.process)


def test_a_configuration_error_stops_everything_without_restarts(tmp_path: Path) -> None:
    bad = tmp_path / "models.yaml"
    bad.write_text("models:\n  - name: x\n    backend: nowhere\n")
    gateway = supervisor(tmp_path, AQUEDUCT_MODELS_CONFIG=str(bad))
    try:
        assert gateway.process.wait(60) == 1
    finally:
        stop(gateway.process)
    text = gateway.log.read_text()
    assert "inference stopped unexpectedly (exit code 2); a configuration error" in text
    assert "restarted" not in text
    assert _gone(gateway.pids())


def test_ctrl_c_with_streams_in_flight_keeps_every_finished_requests_row(
    tmp_path: Path,
) -> None:
    """Ctrl-C stops the edge first: streams finish and their settles reach auth."""
    fake = FakeUpstream("slow", default=Reply.stream(*["x"] * 20, delay_s=0.1)).start()
    models = tmp_path / "models.yaml"
    models.write_text(
        f'models:\n  - name: slow\n    backend: openai\n    upstreams: [{{url: "{fake.url}"}}]\n'
    )
    env = {"AQUEDUCT_MODELS_CONFIG": str(models), "AQUEDUCT_BOOTSTRAP_KEY": "sk-aq-" + "k" * 40}
    gateway = supervisor(tmp_path, **env)
    headers = {"authorization": f"Bearer {env['AQUEDUCT_BOOTSTRAP_KEY']}"}
    finished: list[bool] = []

    def stream() -> None:
        body = {"model": "slow", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        with httpx.stream(
            "POST", f"{gateway.base}/v1/chat/completions", json=body, headers=headers, timeout=30
        ) as answer:
            text = "".join(answer.iter_text())
        finished.append(text.rstrip().endswith("data: [DONE]"))

    try:
        gateway.wait_ready()
        threads = [threading.Thread(target=stream) for _ in range(10)]
        for thread in threads:
            thread.start()
        fake.wait_for(lambda: fake.active == 10, 30)
        gateway.process.send_signal(signal.SIGINT)
        for thread in threads:
            thread.join(30)
        assert gateway.process.wait(60) == 0, gateway.log.read_text()[-3000:]
    finally:
        stop(gateway.process)
        fake.stop()
    assert finished == [True] * 10
    again = supervisor(tmp_path, **env)
    try:
        again.wait_ready()
        usage = httpx.get(f"{again.base}/v1/admin/usage", headers=headers, timeout=10).json()
        assert sum(row["requests"] for row in usage["data"]) == 10
    finally:
        assert stop(again.process, 30) == 0
