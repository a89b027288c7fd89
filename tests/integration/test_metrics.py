"""GET /metrics after a known mix of requests shows exactly what was sent, read with
prometheus-client's own text parser."""

from __future__ import annotations

import dataclasses
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fake_upstream import PROMPT_TOKENS, FakeUpstream, Reply
from tests.processes import free_port
from tests.stack import ADMIN_KEY, Stack

HI = [{"role": "user", "content": "hi"}]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream("metrics").start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def edge(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = Path(tmp_path_factory.mktemp("metrics"))
    config = root / "models.yaml"
    dead = f"http://127.0.0.1:{free_port()}/v1"  # refuses connections
    config.write_text(
        "models:\n  - name: fake\n    backend: openai\n"
        f'    upstreams: [{{url: "{upstream.url}"}}]\n'
        "  - name: pair\n    backend: openai\n"
        f'    upstreams: [{{url: "{dead}"}}, {{url: "{upstream.url}"}}]\n'
    )
    running = Stack(data_dir=root, models_config=config).start()
    yield running
    running.stop()


def samples(base_url: str) -> Samples:
    answer = httpx.get(f"{base_url}/metrics", timeout=10)
    assert answer.status_code == 200
    text = answer.text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def requests(found: Samples, status_class: str, team: str, model: str = "fake") -> float:
    return value(
        found,
        "aqueduct_requests_total",
        route="/v1/chat/completions",
        model=model,
        status_class=status_class,
        team=team,
    )


def test_metrics_count_exactly_what_was_sent(edge: Stack, upstream: FakeUpstream) -> None:
    base = edge.base_url
    key = httpx.post(
        f"{base}/v1/admin/keys",
        headers=ADMIN,
        json={"name": "metered", "team": "t-metrics", "limits": {"rpm": 4}},
    ).json()
    headers = {"authorization": f"Bearer {key['key']}"}
    chat = f"{base}/v1/chat/completions"
    with httpx.Client(headers=headers, timeout=30) as http:
        for _ in range(2):  # JSON: 2 output tokens each (the fake counts chunks)
            upstream.queue(Reply.stream("a", "b"))
            assert http.post(chat, json={"model": "fake", "messages": HI}).status_code == 200
        upstream.queue(Reply.stream("a", "b", "c"))
        streamed = http.post(
            chat,
            json={
                "model": "fake",
                "messages": HI,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        )
        assert streamed.status_code == 200 and streamed.text.endswith("data: [DONE]\n\n")
        assert http.post(chat, json={"model": "fake"}).status_code == 400  # no messages
        upstream.queue(Reply.error(500))
        assert http.post(chat, json={"model": "fake", "messages": HI}).status_code >= 500
        refused = http.post(chat, json={"model": "fake", "messages": HI})  # the 5th in a minute
        assert refused.status_code == 429
    # A client that leaves mid-stream.
    upstream.queue(Reply.stream("x", "y", delay_s=5))
    body = orjson.dumps({"model": "fake", "messages": HI, "stream": True})
    port = int(base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            + f"authorization: Bearer {ADMIN_KEY}\r\ncontent-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        seen = b""
        while b"data:" not in seen:
            part = sock.recv(65536)
            assert part, "the edge closed the stream"
            seen += part
    upstream.wait_for(lambda: bool(upstream.disconnects), timeout=10)

    deadline = time.monotonic() + 10
    while True:  # the disconnect is recorded when the edge notices it
        found = samples(base)
        if requests(found, "4xx", "admin") >= 1 or time.monotonic() > deadline:
            break
        time.sleep(0.05)

    team = "t-metrics"
    assert requests(found, "2xx", team) == 3
    assert requests(found, "5xx", team) == 1
    assert requests(found, "4xx", "", model="") == 2  # refused before admission: 400, 429
    assert requests(found, "4xx", "admin") == 1  # the client that left (499)
    assert value(found, "aqueduct_rate_limited_total", limit="rpm", scope="key", team=team) == 1
    tokens = {"model": "fake", "team": team}
    assert value(found, "aqueduct_tokens_total", **tokens, type="output") == 2 + 2 + 3
    # Input: the upstream's count for the three answered, the estimate for the failed
    # one, exactly as the usage ledger has them.
    input_tokens = value(found, "aqueduct_tokens_total", **tokens, type="input")
    assert input_tokens > 3 * PROMPT_TOKENS

    def ledger() -> list[dict[str, int]]:
        usage = httpx.get(f"{base}/v1/admin/usage", params={"team": team}, headers=ADMIN)
        return list(usage.json()["data"])

    deadline = time.monotonic() + 10
    while ledger()[0]["requests"] < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ledger()[0]["input_tokens"] == input_tokens
    assert ledger()[0]["output_tokens"] == 7
    labels = {"gen_ai_operation_name": "chat", "gen_ai_request_model": "fake"}
    # A first token: the three answered and the one cut short, not the failed one.
    assert value(found, "gen_ai_server_time_to_first_token_seconds_count", **labels) == 4
    assert value(found, "gen_ai_client_token_usage_sum", **labels, gen_ai_token_type="output") >= 7
    assert value(found, "aqueduct_key_cache_lookups_total", result="hit") > 0
    # The queue drains: the last settles (the client that left) may still be on their way.
    deadline = time.monotonic() + 10
    while value(samples(base), "aqueduct_settles_pending") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert value(samples(base), "aqueduct_settles_pending") == 0


def test_metrics_move_to_their_own_port_when_asked(edge: Stack) -> None:
    port = free_port()
    other = dataclasses.replace(edge, ports=dict(edge.ports), edge=None, edge_task=None)
    other.loop.run(other.start_edge(metrics_port=port))
    try:
        assert httpx.get(f"{other.base_url}/metrics").status_code == 404
        scraped = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
        assert scraped.status_code == 200 and "aqueduct_requests_total" in scraped.text
    finally:

        async def stop() -> None:
            assert other.edge is not None and other.edge_task is not None
            other.edge.should_exit = True
            await other.edge_task

        other.loop.run(stop())


def service_samples(stack: Stack, service: str) -> Samples:
    return samples(f"http://127.0.0.1:{stack.metrics_ports[service]}")


def test_services_count_calls_upstreams_and_stored_bytes(
    edge: Stack, upstream: FakeUpstream
) -> None:
    http = httpx.Client(base_url=edge.base_url, headers=ADMIN, timeout=30)
    # One upstream of `pair` refuses connections: each request it takes first is
    # retried on the other, until three failures eject it.
    for _ in range(8):
        answer = http.post("/v1/chat/completions", json={"model": "pair", "messages": HI})
        assert answer.status_code == 200
    found = service_samples(edge, "inference")
    attempts = {
        dict(labels)["upstream"]: count
        for (name, labels), count in found.items()
        if name == "aqueduct_upstream_attempts_total" and dict(labels)["model"] == "pair"
    }
    live = next(u for u in attempts if str(upstream.port) in u)
    dead = next(u for u in attempts if u != live)
    assert attempts[live] == 8
    pair = {"model": "pair"}
    assert value(found, "aqueduct_upstream_failures_total", **pair, upstream=dead) == 3
    assert value(found, "aqueduct_upstream_failures_total", **pair, upstream=live) == 0
    assert value(found, "aqueduct_upstream_ejections_total", **pair, upstream=dead) == 1
    assert value(found, "aqueduct_upstream_retries_total", **pair) == 3
    circuit = "aqueduct_upstream_circuit_state"
    assert value(found, circuit, **pair, upstream=dead, state="open") == 1
    assert value(found, circuit, **pair, upstream=live, state="closed") == 1

    # Calls by method and final code: an unknown file is NOT_FOUND at the files service.
    def not_found() -> float:
        return value(
            service_samples(edge, "files"),
            "grpc_server_handled_total",
            grpc_service="aqueduct.files.v1.FilesService",
            grpc_method="GetFile",
            grpc_code="NOT_FOUND",
        )

    before = not_found()
    assert http.get("/v1/files/file-0123456789abcdef01234567").status_code == 404
    assert not_found() == before + 1

    uploaded = http.post(
        "/v1/files", data={"purpose": "user_data"}, files={"file": ("a.txt", b"x" * 1234)}
    )
    assert uploaded.status_code == 200

    def stored() -> float:  # read from the database at most every few seconds
        return value(service_samples(edge, "files"), "aqueduct_files_stored_bytes", team="admin")

    deadline = time.monotonic() + 15
    while stored() < 1234 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert stored() >= 1234
    handled = service_samples(edge, "auth")
    assert any(
        name == "grpc_server_handled_total"
        and dict(labels)["grpc_service"].startswith("aqueduct.auth")
        for name, labels in handled
    )
