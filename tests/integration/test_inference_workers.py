"""`make run` with several inference workers (AQUEDUCT_INFERENCE_WORKERS=2): one
edge spreads its calls over both (one channel, round-robin per call), the
bundled models are loaded by inference-1 alone and answer through either
worker (inference-2 forwards them, streams and cancellation included), and
limits and the ledger stay exact.

Which worker served what is read from each worker's own metrics address (the
supervisor prints it)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import openai
import pytest
from aqueduct.inference.v1 import inference_pb2 as pb
from aqueduct.inference.v1 import inference_pb2_grpc
from google.rpc import error_details_pb2, status_pb2

from services.inference.local_model import BUNDLED_FILE
from tests.fake_upstream import FakeUpstream
from tests.processes import Supervised, free_port, stop, supervisor, wait_for

ADMIN_KEY = "sk-aq-" + "i" * 40
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
UPSTREAM_MODEL = "fake"
LOCAL_MODEL = "smollm2-135m-instruct"
EMBEDDING_MODEL = "e5-small"
FLAKY_MODEL = "flaky"
WORKERS = ("inference-1", "inference-2")
KILLED = "aqueduct: inference-2 stopped unexpectedly (signal 9); restarting it in 0.5 s."
# The bundled model's end-of-generation tokens, never sampled: 4000 tokens take
# far longer than these tests wait, so only a cancel or a deadline ends them.
NEVER_END = {0: -100.0, 2: -100.0, 4: -100.0}
CHAT_METHODS = ("StreamChatCompletion", "PreparedChatCompletion", "ChatCompletion")


def _upstream_attempts(
    gateway: Supervised, worker: str, model: str = UPSTREAM_MODEL, what: str = "attempts"
) -> float:
    return sum(
        v
        for name, labels, v in gateway.metrics(worker)
        if name == f"aqueduct_upstream_{what}_total" and labels["model"] == model
    )


def _chat_calls(gateway: Supervised, worker: str) -> float:
    """Chat generation calls the worker finished, OK or not."""
    return sum(
        v
        for name, labels, v in gateway.metrics(worker)
        if name == "grpc_server_handled_total" and labels["grpc_method"] in CHAT_METHODS
    )


def _local_generations(gateway: Supervised, worker: str) -> float | None:
    """Generations the bundled model runs now; None where it is not loaded."""
    found = [
        v
        for name, labels, v in gateway.metrics(worker)
        if name == "aqueduct_local_active_generations" and labels["model"] == LOCAL_MODEL
    ]
    return found[0] if found else None


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream("inference-workers").start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def gateway(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Supervised]:
    tmp_path = tmp_path_factory.mktemp("inference-workers")
    models = tmp_path / "models.yaml"
    models.write_text(
        f"models:\n  - name: {UPSTREAM_MODEL}\n    backend: openai\n"
        f'    upstreams: [{{url: "{upstream.url}"}}]\n'
        f"  - name: {LOCAL_MODEL}\n    backend: local\n"
        f"  - name: {EMBEDDING_MODEL}\n    backend: local-embedding\n"
        f"  - name: {FLAKY_MODEL}\n    backend: openai\n"
        f'    upstreams: [{{url: "http://127.0.0.1:{free_port()}/v1"}}]\n'  # nothing listens
    )
    running = supervisor(
        tmp_path,
        AQUEDUCT_AUTH_METRICS_ADDR=f"127.0.0.1:{free_port()}",
        AQUEDUCT_FILES_METRICS_ADDR=f"127.0.0.1:{free_port()}",
        AQUEDUCT_INFERENCE_METRICS_ADDR=f"127.0.0.1:{free_port()}",
        AQUEDUCT_MODELS_CONFIG=str(models),
        AQUEDUCT_BOOTSTRAP_KEY=ADMIN_KEY,
        AQUEDUCT_EDGE_WORKERS="1",
        AQUEDUCT_INFERENCE_WORKERS="2",
        AQUEDUCT_LOCAL_THREADS="1",
    )
    try:
        running.wait_ready(120)
        yield running
    finally:
        assert stop(running.process, 30) == 0, running.log.read_text()[-3000:]
    crashes = {x for x in running.log.read_text().splitlines() if "stopped unexpectedly" in x}
    assert crashes <= {KILLED}  # only the worker the restart test killed


def test_each_worker_has_its_own_grpc_port_pid_and_metrics(gateway: Supervised) -> None:
    addresses = {gateway.grpc_address(w) for w in WORKERS}
    pids = {gateway.pid(w) for w in WORKERS}
    assert len(addresses) == 2 and len(pids) == 2
    assert all(Path(f"/proc/{pid}").exists() for pid in pids)
    assert "  inference  " not in gateway.log.read_text()  # no single `inference` child


def test_one_edge_spreads_upstream_calls_over_both_workers(
    gateway: Supervised, upstream: FakeUpstream
) -> None:
    """One edge, one channel: per connection, every call would go to one worker."""
    before = [_upstream_attempts(gateway, w) for w in WORKERS]
    client = gateway.client(ADMIN_KEY)
    count = 20
    for i in range(count):
        if i % 2:
            answer = client.chat.completions.create(
                model=UPSTREAM_MODEL, messages=[{"role": "user", "content": "hi"}]
            )
            assert answer.choices[0].message.content
        else:
            chunks = list(
                client.chat.completions.create(
                    model=UPSTREAM_MODEL,
                    messages=[{"role": "user", "content": "hi"}],
                    stream=True,
                )
            )
            assert chunks[-1].choices[0].finish_reason == "stop"
    served = [_upstream_attempts(gateway, w) - b for w, b in zip(WORKERS, before, strict=True)]
    assert sum(served) == count, served
    assert all(n >= count // 4 for n in served), served  # round-robin: about half each


def test_the_local_model_is_loaded_by_the_first_worker_only(gateway: Supervised) -> None:
    maps = {w: Path(f"/proc/{gateway.pid(w)}/maps").read_text() for w in WORKERS}
    assert BUNDLED_FILE in maps["inference-1"]  # llama.cpp maps the model file
    assert BUNDLED_FILE not in maps["inference-2"]
    assert "libllama" not in maps["inference-2"]  # not even the library
    assert _local_generations(gateway, "inference-1") is not None
    assert _local_generations(gateway, "inference-2") is None


def test_the_local_models_answer_through_either_worker(gateway: Supervised) -> None:
    before = [_chat_calls(gateway, w) for w in WORKERS]
    client = gateway.client(ADMIN_KEY)
    count = 6
    for i in range(count):
        if i % 2:
            answer = client.chat.completions.create(
                model=LOCAL_MODEL,
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=4,
                temperature=0,
            )
            assert answer.choices[0].message.content
            assert answer.usage is not None and answer.usage.completion_tokens == 4
            assert answer.model == LOCAL_MODEL
        else:
            chunks = list(
                client.chat.completions.create(
                    model=LOCAL_MODEL,
                    messages=[{"role": "user", "content": "hi"}],
                    max_tokens=4,
                    temperature=0,
                    stream=True,
                    stream_options={"include_usage": True},
                )
            )
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    calls = [_chat_calls(gateway, w) - b for w, b in zip(WORKERS, before, strict=True)]
    # inference-1 generated every one (its own share, and inference-2's forwarded
    # to it); inference-2 took its share from the edge.
    assert calls[0] == count and calls[1] > 0, calls
    vectors = client.embeddings.create(model=EMBEDDING_MODEL, input=["a", "b", "c", "d"])
    assert [len(v.embedding) for v in vectors.data] == [384] * 4


def _worker_2(gateway: Supervised) -> inference_pb2_grpc.InferenceServiceStub:
    channel = grpc.insecure_channel(gateway.grpc_address("inference-2"))
    return inference_pb2_grpc.InferenceServiceStub(channel)


def test_a_forwarded_stream_cancelled_stops_the_generation(gateway: Supervised) -> None:
    request = pb.StreamChatCompletionRequest(
        model=LOCAL_MODEL,
        messages=[pb.ChatMessage(role="user", content="Count to one thousand.")],
        sampling=pb.SamplingParams(max_tokens=4000, logit_bias=NEVER_END),
        request_id="forwarded-cancel",
    )
    call = _worker_2(gateway).StreamChatCompletion(request, timeout=60)
    first = next(call)
    assert first.WhichOneof("event") == "deltas"
    assert _local_generations(gateway, "inference-1") == 1  # running over there
    call.cancel()
    wait_for(
        lambda: _local_generations(gateway, "inference-1") == 0,
        10,
        "the owner to stop the cancelled generation",
        gateway.log,
    )


def test_a_forwarded_calls_deadline_stops_the_generation_over_there(gateway: Supervised) -> None:
    request = pb.StreamChatCompletionRequest(
        model=LOCAL_MODEL,
        messages=[pb.ChatMessage(role="user", content="Count to one thousand.")],
        sampling=pb.SamplingParams(max_tokens=4000, logit_bias=NEVER_END),
    )
    call = _worker_2(gateway).StreamChatCompletion(request, timeout=1.5)
    with pytest.raises(grpc.RpcError) as raised:
        list(call)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
    wait_for(
        lambda: _local_generations(gateway, "inference-1") == 0,
        10,
        "the owner to stop the generation whose deadline passed",
        gateway.log,
    )


def test_a_forwarded_error_keeps_its_reason_and_param(gateway: Supervised) -> None:
    stub = _worker_2(gateway)
    request = pb.StreamCompletionRequest(
        model=LOCAL_MODEL,
        prompts=[pb.EmbeddingInput(text="def f(")],
        suffix="return 1",
        request_id="forwarded-error",
    )
    with pytest.raises(grpc.RpcError) as raised:
        list(stub.StreamCompletion(request, timeout=30))
    error = raised.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert "fill-in-the-middle" in error.details()  # type: ignore[attr-defined]
    # As the owner raised it: the edge maps it (param and all) as it would the owner's.
    details = dict(error.trailing_metadata())  # type: ignore[attr-defined]
    info = status_pb2.Status.FromString(details["grpc-status-details-bin"])
    reason = error_details_pb2.ErrorInfo()
    info.details[0].Unpack(reason)
    assert reason.reason == "SUFFIX_UNSUPPORTED" and reason.metadata["param"] == "suffix"


def test_limits_and_ledger_stay_exact_across_workers(gateway: Supervised) -> None:
    rpm = 6
    created = httpx.post(
        f"{gateway.base}/v1/admin/keys",
        headers=ADMIN,
        json={"name": "workers", "limits": {"rpm": rpm}},
        timeout=10,
    )
    assert created.status_code == 201, created.text
    key = created.json()
    client = gateway.client(key["key"])
    started, statuses = time.monotonic(), []
    for i in range(2 * rpm):
        try:
            client.chat.completions.create(
                model=LOCAL_MODEL if i % 3 == 0 else UPSTREAM_MODEL,
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=2,
            )
            statuses.append(200)
        except openai.RateLimitError:
            statuses.append(429)
    assert time.monotonic() - started < 60 / rpm  # no refill in between
    assert statuses == [200] * rpm + [429] * rpm

    def ledger() -> int:
        answer = httpx.get(
            f"{gateway.base}/v1/admin/usage",
            headers=ADMIN,
            params={"key_id": key["id"]},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        return sum(row["requests"] for row in answer.json()["data"])

    wait_for(lambda: ledger() >= rpm, 10, "the ledger rows")
    time.sleep(0.5)  # a duplicate settle would land by now
    assert ledger() == rpm


def test_the_console_shows_every_workers_upstream_failures(gateway: Supervised) -> None:
    """Each worker keeps its own circuit breakers; the console sums what they saw
    and shows the worst state, whichever worker a refresh would reach."""
    client = gateway.client(ADMIN_KEY)
    for _ in range(8):
        with pytest.raises(openai.APIStatusError) as refused:
            client.chat.completions.create(
                model=FLAKY_MODEL, messages=[{"role": "user", "content": "hi"}]
            )
        assert refused.value.status_code in (502, 503)
    failures = [_upstream_attempts(gateway, w, FLAKY_MODEL, "failures") for w in WORKERS]
    assert all(n > 0 for n in failures), failures  # both workers tried it
    for _ in range(4):  # the same answer whichever worker would have answered alone
        answer = httpx.get(f"{gateway.base}/v1/console/models", headers=ADMIN, timeout=10)
        assert answer.status_code == 200, answer.text
        [flaky] = [m for m in answer.json()["data"] if m["id"] == FLAKY_MODEL]
        [upstream] = flaky["upstreams"]
        assert upstream["failures"] == sum(failures)
        assert upstream["state"] in ("open", "half_open")


def _serving(gateway: Supervised, worker: str) -> bool:
    try:
        samples = gateway.metrics(worker)
    except httpx.HTTPError:
        return False
    return any(
        name == "aqueduct_health_serving"
        and labels["health_name"].endswith("InferenceService")
        and v == 1
        for name, labels, v in samples
    )


def test_a_killed_worker_is_skipped_then_restarted_and_used_again(gateway: Supervised) -> None:
    """Last: it kills inference-2. The edge sends nothing to a worker that is gone
    or not yet SERVING again (client-side health checks), so no request fails."""
    client = gateway.client(ADMIN_KEY)

    def chat() -> None:
        answer = client.chat.completions.create(
            model=UPSTREAM_MODEL, messages=[{"role": "user", "content": "hi"}]
        )
        assert answer.choices[0].message.content

    killed = gateway.pid("inference-2")
    os.kill(killed, signal.SIGKILL)
    wait_for(lambda: "inference-2 stopped unexpectedly" in gateway.log.read_text(), 10, "the crash")
    before = _upstream_attempts(gateway, "inference-1")
    for _ in range(10):
        chat()  # all on inference-1 meanwhile
    assert _upstream_attempts(gateway, "inference-1") - before == 10
    wait_for(lambda: "inference-2 restarted (pid" in gateway.log.read_text(), 30, "the restart")
    assert gateway.pid("inference-2") != killed
    wait_for(lambda: _serving(gateway, "inference-2"), 60, "inference-2 SERVING again")
    assert KILLED in gateway.log.read_text()

    def used_again() -> bool:
        chat()
        return _upstream_attempts(gateway, "inference-2") > 0

    wait_for(used_again, 10, "calls to the restarted worker")
