"""Leases at the edge with real services and Redis: two edges never admit more
than a limit, every admitted request has exactly one ledger row, a lease's
unused requests, tokens and slots go back, and leased keys cost auth a call per
lease instead of per request. Requests go through the official openai SDK."""

from __future__ import annotations

import concurrent.futures
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.admin_api import create_key, usage
from tests.fake_upstream import PROMPT_TOKENS, FakeUpstream, Reply
from tests.services_available import REDIS, REDIS_URL, listening
from tests.stack import Stack

pytestmark = pytest.mark.skipif(
    not listening(REDIS), reason="Redis is not running on 127.0.0.1:6379"
)
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream("leases").start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def stack(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = Path(tmp_path_factory.mktemp("leases"))
    config = root / "models.yaml"
    config.write_text(
        "models:\n  - name: fake\n    backend: openai\n"
        f'    upstreams: [{{url: "{upstream.url}"}}]\n'
    )
    running = Stack(data_dir=root, models_config=config, redis_url=REDIS_URL).start()
    yield running
    running.stop()


@pytest.fixture()
def store() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.close()


@contextlib.contextmanager
def another_edge(stack: Stack, **settings: Any) -> Iterator[str]:
    """A second edge on the same services; leaving stops it as SIGTERM would
    (its drain settles every lease)."""
    saved = stack.edge, stack.edge_task, stack.ports["edge"]
    stack.loop.run(stack.start_edge(**settings))
    try:
        yield stack.base_url
    finally:
        stack.loop.run(stack.stop_edge())
        stack.edge, stack.edge_task, stack.ports["edge"] = saved


def sdk(base_url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key=key, max_retries=0, timeout=60)


def ask(client: openai.OpenAI, messages: list[dict[str, str]] = HI, max_tokens: int = 2) -> int:
    try:
        client.chat.completions.create(model="fake", messages=messages, max_tokens=max_tokens)  # type: ignore[arg-type]
    except openai.RateLimitError:
        return 429
    return 200


def samples(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def leased(url: str) -> float:
    return samples(url).get(
        ("aqueduct_limit_admissions_total", frozenset({("path", "leased")})), 0.0
    )


def reserve_calls(stack: Stack) -> float:
    """Reservations auth answered (SettleAndReserveQuota and ReserveQuota), from its metrics."""
    found = samples(f"http://127.0.0.1:{stack.metrics_ports['auth']}")
    return sum(
        value
        for (name, labels), value in found.items()
        if name == "grpc_server_handled_total"
        and dict(labels).get("grpc_method") in ("SettleAndReserveQuota", "ReserveQuota")
    )


def level(store: redis.Redis, key_id: str, limit: str, capacity: int) -> float:
    """A bucket's level now, as the Lua scripts compute it (Redis's clock)."""
    t, ts = store.hmget(f"aq:bucket:key:{key_id}:{limit}", ["t", "ts"])
    seconds, micros = store.time()
    now = seconds + micros / 1e6
    if t is None:
        return float(capacity)
    return min(float(capacity), float(t) + max(0.0, now - float(ts)) * capacity / 60)


def ledger_requests(stack: Stack, key_id: str, expected: int) -> int:
    deadline = time.monotonic() + 10
    while True:
        rows = usage(stack.base_url, key_id=key_id)
        count = int(rows[0]["requests"]) if rows else 0
        if count >= expected or time.monotonic() > deadline:
            return count
        time.sleep(0.1)


def test_two_edges_sharing_redis_never_admit_more_than_the_limit(
    stack: Stack, upstream: FakeUpstream, store: redis.Redis
) -> None:
    upstream.reset()
    rpm = 1000
    key = create_key(stack.base_url, limits={"rpm": rpm, "max_concurrent": 1000})
    first = stack.base_url
    with another_edge(stack) as second:
        clients = [sdk(first, key["key"]), sdk(second, key["key"])]
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(lambda i: ask(clients[i % 2]), range(1300)))
        elapsed = time.monotonic() - started
        print(f"two edges, rpm {rpm}: {statuses.count(200)} of 1300 admitted in {elapsed:.2f} s")
        assert leased(first) > 0 and leased(second) > 0  # both edges admitted from leases
    admitted = statuses.count(200)
    assert statuses.count(429) == 1300 - admitted
    # Never more than the bucket held plus what it refilled meanwhile; never less than
    # that minus what two edges' open leases (20 requests each) may strand.
    refilled = elapsed * rpm / 60
    assert admitted <= rpm + refilled + 1, (admitted, elapsed)
    assert admitted >= rpm - 2 * (rpm // 50), (admitted, elapsed)
    assert upstream.requests == admitted
    assert ledger_requests(stack, key["id"], admitted) == admitted  # one row each
    # All ended, the second edge drained, the first's lease retires within 1 s:
    # no slot of the key is left in Redis.
    deadline = time.monotonic() + 5
    while store.zcard(f"aq:slots:key:{key['id']}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert store.zcard(f"aq:slots:key:{key['id']}") == 0


def test_a_drained_edge_gives_back_what_its_lease_did_not_use(
    stack: Stack, store: redis.Redis
) -> None:
    """20 requests from one lease of 200 requests and ~12,000 input tokens, each
    reserving ~1,400 input tokens and using 11: at the edge's drain the lease gives
    back 180 requests, every token beyond the 220 used, and its slots."""
    rpm, input_tpm = 10_000, 600_000
    key = create_key(
        stack.base_url,
        limits={"rpm": rpm, "input_tpm": input_tpm, "max_concurrent": 1000},
    )
    long = [{"role": "user", "content": "word " * 1100}]  # estimated ~1,400 tokens
    with another_edge(stack) as edge:
        client = sdk(edge, key["key"])
        started = time.monotonic()
        for _ in range(20):
            assert ask(client, long) == 200
        assert leased(edge) == 20
    assert store.zcard(f"aq:slots:key:{key['id']}") == 0  # freed by the drain
    # Without the lease's refunds the buckets would be 180 requests and ~11,700
    # tokens lower, less what refilled since (elapsed * capacity / 60: a fast run
    # tells them apart; a slow one cannot fail for it).
    print(f"lease refunds checked {time.monotonic() - started:.2f} s after the first request")
    assert level(store, key["id"], "rpm", rpm) >= rpm - 20 - 0.5
    assert level(store, key["id"], "input_tpm", input_tpm) >= input_tpm - 20 * PROMPT_TOKENS - 0.5


def test_a_long_request_does_not_hold_its_lease_past_its_time(
    stack: Stack, upstream: FakeUpstream, store: redis.Redis
) -> None:
    """A lease retires after 1 s and settles although one of its requests, a slow
    stream, still runs: only that request's slot stays held, until it ends."""
    upstream.reset()
    upstream.queue(Reply.stream("a", "b", "c", "d", "e", delay_s=1.0))  # ~4 s
    key = create_key(stack.base_url, limits={"rpm": 1000, "max_concurrent": 1000})
    slots = f"aq:slots:key:{key['id']}"
    with another_edge(stack) as edge, concurrent.futures.ThreadPoolExecutor(1) as pool:
        client = sdk(edge, key["key"])

        def slow() -> str:
            chunks = client.chat.completions.create(model="fake", messages=HI, stream=True)  # type: ignore[arg-type]
            return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

        streaming = pool.submit(slow)
        upstream.wait_for(lambda: upstream.active == 1)
        assert [ask(client) for _ in range(5)] == [200] * 5
        time.sleep(1.3)  # the lease retired and settled; the stream still runs
        assert not streaming.done()
        assert store.zcard(slots) == 1  # the stream's own slot entry, nothing else
        assert streaming.result(timeout=30) == "abcde"
        deadline = time.monotonic() + 5
        while store.zcard(slots) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store.zcard(slots) == 0  # the stream's own settle freed it
        assert leased(edge) == 6


def test_a_leased_key_costs_auth_far_fewer_reservations(stack: Stack) -> None:
    """200 requests of a key with large limits: one reserve call per lease, not per
    request; with AQUEDUCT_LIMIT_LEASES off, one per request as before."""
    big = {"rpm": 10_000_000, "input_tpm": 10**9, "output_tpm": 10**9, "max_concurrent": 100_000}
    counts = {}
    for leases in (True, False):
        key = create_key(stack.base_url, limits=big)
        with another_edge(stack, limit_leases=leases) as edge:
            clients = [sdk(edge, key["key"])] * 200
            before = reserve_calls(stack)
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                assert set(pool.map(ask, clients)) == {200}
            counts[leases] = reserve_calls(stack) - before
    print(
        f"auth reservations per 100 limited requests: leases {counts[True] / 2:g}, "
        f"per request {counts[False] / 2:g}"
    )
    assert counts[False] >= 200
    assert counts[True] <= 20


def test_small_limits_still_reserve_per_request(stack: Stack) -> None:
    key = create_key(stack.base_url, limits={"rpm": 5, "max_concurrent": 1})
    with another_edge(stack) as edge:
        client = sdk(edge, key["key"])
        before = reserve_calls(stack)
        assert [ask(client) for _ in range(6)] == [200] * 5 + [429]
        assert reserve_calls(stack) - before == 6
        assert leased(edge) == 0
