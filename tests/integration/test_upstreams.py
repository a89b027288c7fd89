"""`backend: openai` end to end: the openai SDK -> edge -> inference -> fake
upstreams on 127.0.0.1 (tests/fake_upstream.py), and back."""

from __future__ import annotations

import base64
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import orjson
import pytest

from services.inference.openai_backend import OpenAIBackend
from tests.admin_api import create_key
from tests.fake_upstream import PROMPT_TOKENS, FakeUpstream, Reply, fake_vector
from tests.processes import free_port
from tests.stack import ADMIN_KEY, Stack

HI = [{"role": "user", "content": "Say hi."}]
FAKES = ("a", "b", "c", "d", "e")


@pytest.fixture(scope="module")
def journal() -> list[str]:
    return []


@pytest.fixture(scope="module")
def fakes(journal: list[str]) -> Iterator[dict[str, FakeUpstream]]:
    running = {name: FakeUpstream(name, journal=journal).start() for name in FAKES}
    yield running
    for fake in running.values():
        fake.stop()


def models_yaml(fakes: dict[str, FakeUpstream], dead: list[str]) -> str:
    a, b, c, d, e = (fakes[n].url for n in FAKES)
    return f"""
models:
  - name: single
    aliases: [single-alias]
    backend: openai
    timeout_s: 1.5
    owned_by: fake-lab
    upstreams:
      - {{url: "{a}", api_key: sk-upstream-a, model: served-single}}
  - name: patient
    backend: openai
    timeout_s: 60
    upstreams: [{{url: "{a}"}}]
  - name: pair
    backend: openai
    timeout_s: 30
    upstreams: [{{url: "{a}"}}, {{url: "{b}"}}]
  - name: with-dead
    backend: openai
    connect_timeout_s: 2
    upstreams: [{{url: "{dead[0]}"}}, {{url: "{b}"}}]
  - name: dead-only
    backend: openai
    upstreams: [{{url: "{dead[0]}"}}, {{url: "{dead[1]}"}}]
  - name: primary
    backend: openai
    fallbacks: [configured]
    upstreams: [{{url: "{c}"}}]
  - name: second
    backend: openai
    upstreams: [{{url: "{d}"}}]
  - name: configured
    backend: openai
    upstreams: [{{url: "{e}"}}]
  - name: e5
    backend: local-embedding
"""


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, fakes: dict[str, FakeUpstream]
) -> Iterator[Stack]:
    data_dir = Path(tmp_path_factory.mktemp("upstreams"))
    dead = [f"http://127.0.0.1:{free_port()}/v1" for _ in range(2)]  # nothing listens
    config = data_dir / "models.yaml"
    config.write_text(models_yaml(fakes, dead))
    running = Stack(data_dir=data_dir, models_config=config).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(stack: Stack) -> openai.OpenAI:
    return stack.sdk(timeout=30)


@pytest.fixture(autouse=True)
def fresh(fakes: dict[str, FakeUpstream], journal: list[str], stack: Stack) -> None:
    """Every test starts with idle fakes answering the default and healthy replicas."""
    for fake in fakes.values():
        fake.wait_for(lambda f=fake: f.active == 0)  # type: ignore[misc]
        fake.reset()
    journal.clear()
    assert stack.inference is not None
    for model in stack.inference.catalog.current.models:
        if isinstance(model.backend, OpenAIBackend):
            for replica in model.backend.balancer.replicas:
                replica.failures, replica.ejected_until, replica.probing = 0, 0.0, False


def chat(client: openai.OpenAI, model: str, **options: object) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(model=model, messages=HI, **options)  # type: ignore[call-overload,no-any-return]


# -- what reaches the upstream, what comes back --------------------------------


def test_chat_reaches_the_upstream_with_its_model_name_key_and_usage_request(
    client: openai.OpenAI, fakes: dict[str, FakeUpstream]
) -> None:
    reply = chat(client, "single-alias", max_tokens=7, temperature=0.5, stop=["x"], seed=3)
    assert reply.choices[0].message.content == "Hello world"
    assert reply.model == "single"  # the alias resolved to the model that served
    assert reply.usage is not None and reply.usage.prompt_tokens == PROMPT_TOKENS
    sent = fakes["a"].received[-1]
    assert sent["model"] == "served-single"
    assert sent["messages"] == HI
    assert sent["stream"] is False and "stream_options" not in sent  # whole: one JSON answer
    assert (sent["max_tokens"], sent["temperature"], sent["stop"], sent["seed"]) == (
        7,
        0.5,
        ["x"],
        3,
    )
    assert fakes["a"].headers[-1]["authorization"] == "Bearer sk-upstream-a"


def test_a_json_request_takes_the_upstreams_whole_answer_and_its_usage(
    client: openai.OpenAI, fakes: dict[str, FakeUpstream]
) -> None:
    fakes["a"].queue(Reply.json("The whole answer.", finish="length"))
    reply = chat(client, "single", max_tokens=3)
    assert fakes["a"].received[-1]["stream"] is False
    assert reply.choices[0].message.content == "The whole answer."
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (PROMPT_TOKENS, 1)


def test_stream_forwards_chunks_and_usage_only_when_asked(
    client: openai.OpenAI, fakes: dict[str, FakeUpstream]
) -> None:
    fakes["a"].default = Reply.stream("one", " two", " three", delay_s=0.05)
    plain = list(client.chat.completions.create(model="single", messages=HI, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in plain if c.choices) == (
        "one two three"
    )
    assert all(c.usage is None for c in plain)
    assert all(c.model == "single" for c in plain)
    assert fakes["a"].received[-1]["stream_options"] == {"include_usage": True}  # asked anyway
    with_usage = list(
        client.chat.completions.create(
            model="single", messages=HI, stream=True, stream_options={"include_usage": True}
        )
    )
    usage = with_usage[-1].usage
    assert usage is not None and usage.prompt_tokens == PROMPT_TOKENS
    assert usage.completion_tokens == 3
    # Each upstream chunk came 50 ms apart: each is its own SSE event, never held back.
    assert len([c for c in with_usage if c.choices and c.choices[0].delta.content]) == 3


def test_usage_is_counted_when_the_upstream_reports_none(
    client: openai.OpenAI, fakes: dict[str, FakeUpstream]
) -> None:
    fakes["a"].default = Reply.stream("a fairly long answer of many words", usage=False)
    reply = chat(client, "single")
    assert reply.usage is not None
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0


def test_an_upstream_that_answers_json_to_a_stream_request_still_works(
    client: openai.OpenAI, fakes: dict[str, FakeUpstream]
) -> None:
    fakes["a"].default = Reply.json("whole answer", finish="length")
    reply = chat(client, "single")
    assert reply.choices[0].message.content == "whole answer"
    assert reply.choices[0].finish_reason == "length"


def test_requests_share_pooled_keep_alive_connections(
    client: openai.OpenAI, fakes: dict[str, FakeUpstream]
) -> None:
    for _ in range(3):
        chat(client, "single")
    assert len(set(fakes["a"].client_ports)) == 1


# -- balancing, retries, health --------------------------------------------------


def test_load_spreads_across_two_replicas_by_outstanding_requests(
    client: openai.OpenAI, fakes: dict[str, FakeUpstream]
) -> None:
    for name in ("a", "b"):
        fakes[name].default = Reply.stream("slow", " answer", delay_s=2.0)
    errors: list[BaseException] = []

    def one() -> None:
        try:
            chat(client, "pair")
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for thread in threads:
        thread.start()
    fakes["a"].wait_for(lambda: fakes["a"].active + fakes["b"].active == 4, timeout=10)
    assert (fakes["a"].active, fakes["b"].active) == (2, 2)
    for thread in threads:
        thread.join(30)
    assert not errors
    # One at a time, the replicas take turns.
    for name in ("a", "b"):
        fakes[name].default = Reply.stream()
    for _ in range(4):
        chat(client, "pair")
    assert (fakes["a"].requests, fakes["b"].requests) == (4, 4)


def test_a_dead_replica_is_skipped_and_ejected(
    client: openai.OpenAI, fakes: dict[str, FakeUpstream], stack: Stack
) -> None:
    for _ in range(6):
        assert chat(client, "with-dead").choices[0].message.content == "Hello world"
    assert fakes["b"].requests == 6
    assert stack.inference is not None
    backend = stack.inference.catalog.current.resolve("with-dead").backend
    assert isinstance(backend, OpenAIBackend)
    dead = backend.balancer.replicas[0]
    assert dead.ejected_until > 0 and dead.failures == 3  # ejected: no 4th try


def test_502_and_503_are_retried_on_another_replica(
    client: openai.OpenAI, fakes: dict[str, FakeUpstream]
) -> None:
    fakes["a"].default = Reply.error(503, "overloaded")
    for _ in range(4):
        assert chat(client, "pair").choices[0].message.content == "Hello world"
    assert fakes["b"].requests == 4
    assert 1 <= fakes["a"].requests <= 3  # tried until ejected after 3 failures


def test_every_replica_failing_answers_their_status(
    client: openai.OpenAI, fakes: dict[str, FakeUpstream]
) -> None:
    fakes["a"].queue(Reply.error(502, "bad a"))
    fakes["b"].queue(Reply.error(502, "bad b"))
    with pytest.raises(openai.APIStatusError) as caught:
        chat(client, "pair")
    assert caught.value.status_code == 502
    assert (fakes["a"].requests, fakes["b"].requests) == (1, 1)
    fakes["a"].queue(Reply.error(503, "busy a"))
    fakes["b"].queue(Reply.error(503, "busy b"))
    with pytest.raises(openai.APIStatusError) as caught:
        chat(client, "pair")
    assert caught.value.status_code == 503


def test_refused_connections_everywhere_answer_503(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        chat(client, "dead-only")
    assert caught.value.status_code == 503
    assert caught.value.code == "upstream_unavailable"  # type: ignore[attr-defined]


def test_no_retry_after_the_first_byte(
    client: openai.OpenAI, fakes: dict[str, FakeUpstream]
) -> None:
    for name in ("a", "b"):
        fakes[name].default = Reply.stream("one", " two", break_after=1)
    stream = client.chat.completions.create(model="pair", messages=HI, stream=True)
    texts = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            texts.append(chunk.choices[0].delta.content or "" if chunk.choices else "")
    assert "".join(texts) == "one"
    assert "mid-stream" in caught.value.message
    assert fakes["a"].requests + fakes["b"].requests == 1
    with pytest.raises(openai.APIStatusError) as status:
        chat(client, "pair")
    assert status.value.status_code == 502
    assert fakes["a"].requests + fakes["b"].requests == 2


# -- fallbacks ---------------------------------------------------------------------


def test_fallback_order_is_request_models_then_configured_fallbacks(
    client: openai.OpenAI, fakes: dict[str, FakeUpstream], journal: list[str]
) -> None:
    fakes["c"].default = Reply.error(503, "primary down")
    fakes["d"].default = Reply.error(429, "second busy")
    reply = chat(client, "primary", extra_body={"models": ["second"]})
    assert journal == ["c", "d", "e"]
    assert reply.model == "configured"
    journal.clear()
    stream = list(
        client.chat.completions.create(
            model="primary", messages=HI, stream=True, extra_body={"models": ["second"]}
        )
    )
    assert journal == ["c", "d", "e"]
    assert {c.model for c in stream if c.choices and c.choices[0].delta.content} == {"configured"}
    assert stream[-1].model == "configured"


def test_every_stream_chunk_names_the_model_that_served(
    client: openai.OpenAI, fakes: dict[str, FakeUpstream]
) -> None:
    fakes["c"].default = Reply.error(503, "primary down")
    stream = list(client.chat.completions.create(model="primary", messages=HI, stream=True))
    assert {c.model for c in stream} == {"configured"}


def test_request_errors_do_not_fall_back(
    client: openai.OpenAI, fakes: dict[str, FakeUpstream], journal: list[str]
) -> None:
    fakes["c"].default = Reply.error(400, "your prompt is wrong")
    with pytest.raises(openai.BadRequestError) as caught:
        chat(client, "primary", extra_body={"models": ["second"]})
    assert caught.value.message.endswith("your prompt is wrong")
    assert journal == ["c"]


def test_unknown_fallback_model_is_404_naming_models(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        chat(client, "single", extra_body={"models": ["nope"]})
    assert caught.value.body["param"] == "models"  # type: ignore[index]


def test_configured_fallbacks_never_reach_a_model_outside_the_keys_list(
    stack: Stack, fakes: dict[str, FakeUpstream], journal: list[str]
) -> None:
    """Issue #20: a key allowed only `primary`, whose configured fallback is
    `configured`, must not be served by `configured` when `primary` is down."""
    fakes["c"].default = Reply.error(503, "primary down")
    only_primary = stack.sdk(create_key(stack.base_url, models=["primary"])["key"], timeout=30)
    with pytest.raises(openai.PermissionDeniedError) as caught:
        chat(only_primary, "primary")
    error = caught.value.body
    assert (error["code"], error["param"]) == ("model_not_allowed", "model")  # type: ignore[index]
    assert "'primary'" in error["message"]  # type: ignore[index]
    assert journal == ["c"]  # `configured` never asked
    journal.clear()
    with pytest.raises(openai.PermissionDeniedError):  # a stream too, before any text
        list(only_primary.chat.completions.create(model="primary", messages=HI, stream=True))
    assert journal == ["c"]
    journal.clear()
    both = stack.sdk(create_key(stack.base_url, models=["primary", "configured"])["key"])
    assert chat(both, "primary").model == "configured"
    assert journal == ["c", "e"]


# -- timeouts and upstream errors --------------------------------------------------


def test_hang_is_504(client: openai.OpenAI, fakes: dict[str, FakeUpstream]) -> None:
    fakes["a"].default = Reply.hang()
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as caught:
        chat(client, "single")
    assert caught.value.status_code == 504
    assert 1.4 < time.monotonic() - started < 10
    fakes["a"].wait_for(lambda: fakes["a"].active == 0)  # and it was hung up on


def test_a_stream_that_stalls_past_the_timeout_ends_with_an_error_event(
    client: openai.OpenAI, fakes: dict[str, FakeUpstream]
) -> None:
    fakes["a"].default = Reply.stream("early", " late", delay_s=5)
    texts = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in client.chat.completions.create(model="single", messages=HI, stream=True):
            texts.append(chunk.choices[0].delta.content or "" if chunk.choices else "")
    assert "".join(texts) == "early"
    assert "timeout" in caught.value.message


def test_429_keeps_its_retry_after(client: openai.OpenAI, fakes: dict[str, FakeUpstream]) -> None:
    fakes["a"].default = Reply.error(429, "slow down", headers=(("retry-after", "7"),))
    with pytest.raises(openai.RateLimitError) as caught:
        chat(client, "single")
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.message.endswith("slow down")


@pytest.mark.parametrize("status", [400, 401, 404, 409, 422])
def test_upstream_4xx_keeps_status_and_message(
    client: openai.OpenAI, fakes: dict[str, FakeUpstream], status: int
) -> None:
    fakes["a"].default = Reply.error(status, f"upstream says {status}")
    with pytest.raises(openai.APIStatusError) as caught:
        chat(client, "single")
    assert caught.value.status_code == status
    assert caught.value.body["message"] == f"upstream says {status}"  # type: ignore[index]


@pytest.mark.parametrize(
    ("reply", "problem"),
    [
        (Reply.garbage(), "not valid JSON"),
        (Reply.garbage_sse(), "not valid JSON"),
        (Reply.stream("cut", done=False, finish=""), "ended before the completion finished"),
    ],
)
def test_upstream_garbage_is_502_with_a_clear_message(
    client: openai.OpenAI, fakes: dict[str, FakeUpstream], reply: Reply, problem: str
) -> None:
    fakes["a"].default = reply
    with pytest.raises(openai.APIStatusError) as caught:
        chat(client, "single")
    assert caught.value.status_code == 502
    assert problem in caught.value.message
    assert caught.value.body["type"] == "server_error"  # type: ignore[index]


# -- cancellation --------------------------------------------------------------------


def raw_post(stack: Stack, path: str, body: dict[str, object]) -> socket.socket:
    data = orjson.dumps(body)
    sock = socket.create_connection(("127.0.0.1", stack.ports["edge"]), timeout=10)
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {ADMIN_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode()
        + data
    )
    return sock


def use_prepared_call(stack: Stack, prepared: bool) -> None:
    """Make the next chat request go on a prepared call (edge/prepared_calls.py),
    or on a plain one."""
    calls = stack.gateway.chat_calls

    async def arrange() -> None:
        calls.close()
        if prepared:
            calls.replenish()

    stack.loop.run(arrange())


@pytest.mark.parametrize("prepared", [True, False], ids=["prepared-call", "plain-call"])
def test_client_disconnect_mid_stream_closes_the_upstream_request_promptly(
    stack: Stack, fakes: dict[str, FakeUpstream], prepared: bool
) -> None:
    use_prepared_call(stack, prepared)
    fakes["a"].default = Reply.stream("first", " never", delay_s=30)
    sock = raw_post(
        stack, "/v1/chat/completions", {"model": "patient", "messages": HI, "stream": True}
    )
    seen = b""
    while b"first" not in seen:
        part = sock.recv(65536)
        assert part, "the edge closed the stream early"
        seen += part
    assert stack.gateway.chat_calls.ready == 0  # none left: the request took it, or none was
    closed = time.monotonic()
    sock.close()
    fakes["a"].wait_for(lambda: bool(fakes["a"].disconnects), timeout=5)
    assert fakes["a"].disconnects[0] - closed < 1.0  # 30 s if it were not passed on


@pytest.mark.parametrize("prepared", [True, False], ids=["prepared-call", "plain-call"])
def test_client_disconnect_while_waiting_closes_the_upstream_request_promptly(
    stack: Stack, fakes: dict[str, FakeUpstream], prepared: bool
) -> None:
    use_prepared_call(stack, prepared)
    fakes["a"].default = Reply.hang()
    sock = raw_post(stack, "/v1/chat/completions", {"model": "patient", "messages": HI})
    fakes["a"].wait_for(lambda: fakes["a"].active == 1)
    time.sleep(0.1)
    closed = time.monotonic()
    sock.close()
    fakes["a"].wait_for(lambda: bool(fakes["a"].disconnects), timeout=5)
    assert fakes["a"].disconnects[0] - closed < 1.0  # 30 s if it were not passed on


def test_client_disconnect_mid_body_closes_a_non_streamed_request_promptly(
    stack: Stack, fakes: dict[str, FakeUpstream]
) -> None:
    fakes["a"].default = Reply.stream("first", " never", delay_s=30)
    sock = raw_post(stack, "/v1/chat/completions", {"model": "patient", "messages": HI})
    fakes["a"].wait_for(lambda: fakes["a"].active == 1)
    time.sleep(0.2)  # the first chunk is out; the rest would take 30 s
    closed = time.monotonic()
    sock.close()
    fakes["a"].wait_for(lambda: bool(fakes["a"].disconnects), timeout=5)
    assert fakes["a"].disconnects[0] - closed < 1.0  # 30 s if it were not passed on


def test_client_disconnect_closes_an_embeddings_request_promptly(
    stack: Stack, fakes: dict[str, FakeUpstream]
) -> None:
    fakes["a"].default = Reply.hang()
    sock = raw_post(stack, "/v1/embeddings", {"model": "patient", "input": "hi"})
    fakes["a"].wait_for(lambda: fakes["a"].active == 1)
    closed = time.monotonic()
    sock.close()
    fakes["a"].wait_for(lambda: bool(fakes["a"].disconnects), timeout=5)
    assert fakes["a"].disconnects[0] - closed < 1.0  # 30 s if it were not passed on


# -- embeddings ------------------------------------------------------------------------


def test_embeddings_route_to_the_upstream_in_float_and_base64(
    client: openai.OpenAI, fakes: dict[str, FakeUpstream], journal: list[str]
) -> None:
    floats = client.embeddings.create(
        model="pair", input=["alpha", "beta"], encoding_format="float", dimensions=16
    )
    sent = fakes[journal[-1]].received[-1]
    assert sent["input"] == ["alpha", "beta"] and sent["dimensions"] == 16
    assert [d.index for d in floats.data] == [0, 1]
    expected = fake_vector('"alpha"', 16)
    assert floats.data[0].embedding == pytest.approx(expected, abs=1e-6)
    assert floats.usage.prompt_tokens == 6 and floats.model == "pair"
    default = client.embeddings.create(model="pair", input="alpha", dimensions=16)
    assert default.data[0].embedding == pytest.approx(expected, abs=1e-6)  # SDK decoded base64
    tokens = client.embeddings.create(model="pair", input=[[1, 2, 3]], encoding_format="float")
    assert fakes[journal[-1]].received[-1]["input"] == [[1, 2, 3]]
    assert len(tokens.data[0].embedding) == 8


def test_embeddings_raw_base64_is_little_endian_float32(stack: Stack) -> None:
    answer = httpx.post(
        f"{stack.base_url}/v1/embeddings",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        json={"model": "pair", "input": "alpha", "encoding_format": "base64"},
    )
    assert answer.status_code == 200, answer.text
    packed = base64.b64decode(answer.json()["data"][0]["embedding"])
    assert struct.unpack("<8f", packed) == pytest.approx(fake_vector('"alpha"', 8), abs=1e-6)


def test_local_embeddings_from_the_bundled_e5_model(client: openai.OpenAI) -> None:
    answer = client.embeddings.create(
        model="e5", input=["the cat sat on the mat", "a cat is sitting", "stock prices fell"]
    )
    vectors = [d.embedding for d in answer.data]
    assert [len(v) for v in vectors] == [384, 384, 384]
    assert answer.usage.prompt_tokens > 10
    dot = [sum(x * y for x, y in zip(vectors[0], v, strict=True)) for v in vectors]
    assert dot[0] == pytest.approx(1.0, abs=1e-3)  # unit length
    assert dot[1] > dot[2]  # cats are closer to cats than to stock prices
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="e5", input="x", dimensions=10)
    assert caught.value.body["param"] == "dimensions"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="e5", input=[[1, 2]])
    assert caught.value.body["param"] == "input"  # type: ignore[index]


def test_chat_on_an_embedding_model_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        chat(client, "e5")
    assert caught.value.code == "operation_not_supported"  # type: ignore[attr-defined]


# -- models ----------------------------------------------------------------------------


def test_models_list_and_retrieve_resolve_aliases(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list().data]
    assert {"single", "single-alias", "pair", "e5"} <= set(ids)
    alias = client.models.retrieve("single-alias")
    assert alias.id == "single-alias" and alias.owned_by == "fake-lab"
    assert alias.model_extra is not None and alias.model_extra["root"] == "single"
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("no-such-model")
    assert caught.value.code == "model_not_found"  # type: ignore[attr-defined]


def test_requests_beyond_the_upstream_pool_get_a_fast_503(tmp_path: Path) -> None:
    """With every connection to the upstream busy, a request waits at most the pool
    wait, then gets 503 `upstream_busy` (it used to queue silently for minutes)."""
    fake = FakeUpstream("busy", default=Reply.stream(*["x"] * 30, delay_s=0.1)).start()
    config = tmp_path / "models.yaml"
    config.write_text(
        f'models:\n  - name: busy\n    backend: openai\n    upstreams: [{{url: "{fake.url}"}}]\n'
    )
    stack = Stack(
        data_dir=tmp_path,
        models_config=config,
        inference_overrides={"upstream_max_connections": 2, "upstream_pool_wait_s": 0.3},
    ).start()
    try:
        client = stack.sdk()
        streams = [
            client.chat.completions.create(model="busy", messages=HI, stream=True) for _ in range(2)
        ]
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as refused:
            client.chat.completions.create(model="busy", messages=HI)
        assert time.monotonic() - started < 5
        assert refused.value.status_code == 503
        assert refused.value.response.json()["error"]["code"] == "upstream_busy"
        assert refused.value.response.headers["retry-after"] == "1"
        for stream in streams:  # the two that had connections finish normally
            assert (
                "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "x" * 30
            )
    finally:
        stack.stop()
        fake.stop()
