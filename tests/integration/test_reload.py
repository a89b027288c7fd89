"""SIGHUP reloads the models file of a running `python -m services.inference`
without dropping the requests in flight; a broken file changes nothing."""

from __future__ import annotations

import signal
from pathlib import Path

import grpc
from aqueduct.inference.v1 import inference_pb2 as pb
from aqueduct.inference.v1 import inference_pb2_grpc

from tests.fake_upstream import FakeUpstream, Reply
from tests.integration.test_processes import serving
from tests.processes import free_port, spawn, stop, wait_for


def models_yaml(url: str, upstream_model: str, extra: str = "") -> str:
    return f"""
models:
  - name: m
    backend: openai
    upstreams: [{{url: "{url}", model: {upstream_model}}}]
{extra}"""


def model_ids(stub: inference_pb2_grpc.InferenceServiceStub) -> list[str]:
    return [m.id for m in stub.ListModels(pb.ListModelsRequest(), timeout=5).models]


def test_sighup_reload_keeps_a_running_stream_alive(tmp_path: Path) -> None:
    upstream = FakeUpstream("reload").start()
    upstream.default = Reply.stream("one", " two", " three", delay_s=0.4)
    config = tmp_path / "models.yaml"
    config.write_text(models_yaml(upstream.url, "before"))
    address = f"127.0.0.1:{free_port()}"
    log = tmp_path / "inference.log"
    process = spawn(
        ["-m", "services.inference"],
        {"AQUEDUCT_INFERENCE_ADDR": address, "AQUEDUCT_MODELS_CONFIG": str(config)},
        log,
    )
    try:
        wait_for(lambda: serving(address), 60, "inference SERVING")
        with grpc.insecure_channel(address) as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            request = pb.StreamChatCompletionRequest(
                model="m", messages=[pb.ChatMessage(role="user", content="hi")]
            )
            running = stub.StreamChatCompletion(request, timeout=30)
            first = next(running)
            assert first.deltas.deltas[0].content == "one"

            added = '  - name: added\n    backend: openai\n    upstreams: [{url: "%s"}]\n'
            config.write_text(models_yaml(upstream.url, "after", added % upstream.url))
            process.send_signal(signal.SIGHUP)
            wait_for(lambda: "added" in model_ids(stub), 10, "the reloaded models")

            rest = list(running)  # the old backend finishes what it started
            text = first.deltas.deltas[0].content + "".join(
                d.content for m in rest if m.HasField("deltas") for d in m.deltas.deltas
            )
            assert text == "one two three"
            assert rest[-1].summary.choice_ends[0].finish_reason == pb.FINISH_REASON_STOP
            assert upstream.received[0]["model"] == "before"
            assert upstream.disconnects == []  # never cut

            upstream.default = Reply.stream("new")
            list(stub.StreamChatCompletion(request, timeout=30))
            assert upstream.received[-1]["model"] == "after"

            config.write_text("models: [{name: broken, backend: nonsense}]\n")
            process.send_signal(signal.SIGHUP)
            wait_for(lambda: "models file not reloaded" in log.read_text(), 10, "the refusal")
            assert sorted(model_ids(stub)) == ["added", "m"]
            list(stub.StreamChatCompletion(request, timeout=30))
            assert upstream.received[-1]["model"] == "after"
        assert process.poll() is None
    finally:
        assert stop(process) == 0, log.read_text()[-3000:]
        upstream.stop()
    assert "models[0].backend" in log.read_text()  # the log names what was wrong
