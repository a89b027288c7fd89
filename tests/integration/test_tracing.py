"""One streamed chat request is one trace: the client's trace context reaches the
edge, auth, inference and the upstream, each span a child of the hop before it.

The services run in-process here, so one in-memory exporter sees every span.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from core import tracing
from tests.admin_api import create_key
from tests.fake_upstream import FakeUpstream, Reply
from tests.stack import Stack

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    tracing.use(provider)  # before the stack: services install their interceptor at start
    yield spans
    tracing.stop()


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream("traced").start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def stack(
    exporter: InMemorySpanExporter, upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    root = Path(tmp_path_factory.mktemp("tracing"))
    config = root / "models.yaml"
    config.write_text(
        "models:\n  - name: fake\n    backend: openai\n"
        f'    upstreams: [{{url: "{upstream.url}"}}]\n'
        "  - name: local\n    backend: local\n"
    )
    running = Stack(data_dir=root, models_config=config).start()
    yield running
    running.stop()


def by_name(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, (name, sorted(s.name for s in spans))
    return found[0]


def is_child(child: ReadableSpan, parent: ReadableSpan) -> bool:
    assert child.parent is not None and parent.context is not None
    return child.parent.span_id == parent.context.span_id


def test_one_streamed_request_is_one_trace_across_every_hop(
    stack: Stack, exporter: InMemorySpanExporter, upstream: FakeUpstream
) -> None:
    key = create_key(stack.base_url, limits={"rpm": 100})["key"]  # limited: auth reserves
    exporter.clear()
    upstream.reset()
    upstream.queue(Reply.stream("Hel", "lo"))
    stream = stack.sdk(key).chat.completions.create(
        model="fake",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        extra_headers={"traceparent": CLIENT_PARENT},
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "Hello"

    def ours(spans: list[ReadableSpan]) -> list[ReadableSpan]:
        return [
            s for s in spans if s.context is not None and f"{s.context.trace_id:032x}" == TRACE_ID
        ]

    # The request's span ends when the stream closes, just after the client's last read.
    upstream.wait_for(
        lambda: any(
            s.name == "POST /v1/chat/completions" for s in ours(list(exporter.get_finished_spans()))
        ),
        timeout=10,
    )
    spans = ours(list(exporter.get_finished_spans()))
    request = by_name(spans, "POST /v1/chat/completions")
    assert request.parent is not None and f"{request.parent.span_id:016x}" == "00f067aa0ba902b7"
    assert request.attributes is not None
    assert request.attributes["gen_ai.usage.output_tokens"] == 2
    assert request.attributes["http.response.status_code"] == 200

    verify = by_name(spans, "aqueduct.auth.v1.AuthService/VerifyKey")
    assert is_child(verify, by_name(spans, "aqueduct.authenticate"))
    # The reservation (carrying earlier requests' settles, if any were waiting).
    reserve = by_name(spans, "aqueduct.auth.v1.AuthService/SettleAndReserveQuota")
    assert is_child(reserve, by_name(spans, "aqueduct.reserve"))
    assert is_child(by_name(spans, "aqueduct.reserve"), request)

    generation = next(s for s in spans if "InferenceService/" in s.name)
    assert is_child(generation, request)
    attempt = by_name(spans, "POST")
    assert is_child(attempt, generation)
    assert attempt.attributes is not None
    assert attempt.attributes["http.response.status_code"] == 200
    # The upstream was told the attempt's context.
    assert attempt.context is not None
    sent = upstream.headers[-1]["traceparent"]
    assert sent == f"00-{TRACE_ID}-{attempt.context.span_id:016x}-01"


def test_a_request_without_trace_context_starts_its_own_trace(
    stack: Stack, exporter: InMemorySpanExporter, upstream: FakeUpstream
) -> None:
    exporter.clear()
    upstream.queue(Reply.json("ok"))
    stack.sdk().chat.completions.create(model="fake", messages=[{"role": "user", "content": "x"}])
    spans = list(exporter.get_finished_spans())
    request = by_name(spans, "POST /v1/chat/completions")
    assert request.parent is None and request.context is not None
    assert all(
        s.context is not None and s.context.trace_id == request.context.trace_id
        for s in spans
        if not s.name.endswith("/SettleQuotas")  # batched: many requests' settles
    )


def test_a_local_generation_is_a_span_with_its_tokens_and_queue_wait(
    stack: Stack, exporter: InMemorySpanExporter
) -> None:
    exporter.clear()
    answer = stack.sdk().chat.completions.create(
        model="local", messages=[{"role": "user", "content": "Say hi"}], max_tokens=3
    )
    assert answer.usage is not None
    spans = list(exporter.get_finished_spans())
    generation = by_name(spans, "chat local")
    call = next(s for s in spans if "InferenceService/" in s.name)
    assert is_child(generation, call)
    attributes = generation.attributes
    assert attributes is not None
    assert attributes["gen_ai.request.model"] == "local"
    assert attributes["gen_ai.usage.input_tokens"] == answer.usage.prompt_tokens
    assert attributes["gen_ai.usage.output_tokens"] == answer.usage.completion_tokens
    assert attributes["gen_ai.response.finish_reasons"] == (answer.choices[0].finish_reason,)
    assert float(attributes["aqueduct.local.queue_wait_ms"]) >= 0
    assert attributes["aqueduct.local.requests_ahead"] == 0  # nothing else was running
