"""The Batch API end to end: the official SDK uploads a JSONL file, creates a
batch, polls it and reads the output and error files; lines run through the
edge's own pipeline against fake upstreams (and the bundled embedding model)."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from sqlalchemy import text

from tests.admin_api import ADMIN, create_key, usage
from tests.fake_upstream import PROMPT_TOKENS, FakeUpstream, Reply
from tests.openai_schemas import problems
from tests.stack import ADMIN_KEY, Stack

FINAL = {"completed", "failed", "cancelled", "expired"}


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream("batch").start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def live_upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream("live").start()
    yield fake
    fake.stop()


def models_file(root: Path, upstream: FakeUpstream, live: FakeUpstream) -> Path:
    config = root / "models.yaml"
    config.write_text(
        f"""
models:
  - name: fake
    backend: openai
    upstreams: [{{url: "{upstream.url}"}}]
  - name: other
    backend: openai
    upstreams: [{{url: "{upstream.url}"}}]
  - name: live
    backend: openai
    upstreams: [{{url: "{live.url}"}}]
  - name: e5
    backend: local-embedding
"""
    )
    return config


@pytest.fixture(scope="module")
def stack(
    upstream: FakeUpstream, live_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    root = Path(tmp_path_factory.mktemp("batches"))
    from edge.config import BatchSettings

    running = Stack(
        data_dir=root,
        models_config=models_file(root, upstream, live_upstream),
        edge_overrides={
            "batch": BatchSettings(
                concurrency=2, live_threshold=1, lease_s=3.0, poll_s=0.1, stop_grace_s=10.0
            )
        },
    ).start()
    yield running
    running.stop()


@pytest.fixture(autouse=True)
def fresh(upstream: FakeUpstream, live_upstream: FakeUpstream) -> None:
    upstream.reset()
    live_upstream.reset()


def conforms(name: str, instance: object) -> None:
    found = problems(name, instance)
    assert not found, f"{name}: {found}\n{orjson.dumps(instance).decode()[:2000]}"


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


def chat_line(custom_id: str, model: str = "fake", content: str = "hi") -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": content}]},
    }


def upload(client: openai.OpenAI, content: bytes, purpose: str = "batch") -> str:
    return client.files.create(file=("input.jsonl", io.BytesIO(content)), purpose=purpose).id  # type: ignore[arg-type]


def wait_for(
    client: openai.OpenAI, batch_id: str, done: Callable[[Any], bool], timeout: float = 30.0
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if done(batch):
            return batch
        assert time.monotonic() < deadline, f"batch stuck: {batch}"
        time.sleep(0.05)


def finished(client: openai.OpenAI, batch_id: str, timeout: float = 30.0) -> Any:
    return wait_for(client, batch_id, lambda b: b.status in FINAL, timeout)


def lines_of(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [orjson.loads(line) for line in client.files.content(file_id).content.splitlines()]


def raw_batch(stack: Stack, batch_id: str, key: str = ADMIN_KEY) -> dict[str, Any]:
    answer = httpx.get(
        f"{stack.base_url}/v1/batches/{batch_id}", headers={"authorization": f"Bearer {key}"}
    )
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    conforms("Batch", body)
    return body


def test_a_chat_batch_runs_every_line_and_a_forbidden_model_fails_only_its_line(
    stack: Stack, upstream: FakeUpstream
) -> None:
    key = create_key(stack.base_url, team="batch-team", models=["fake"])
    client = stack.sdk(key["key"])
    lines = [chat_line(f"req-{n}", content=f"line {n}") for n in range(5)]
    lines.append(chat_line("forbidden", model="other"))
    file_id = upload(client, jsonl(lines))
    created = client.batches.create(
        input_file_id=file_id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"job": "eval-1"},
    )
    assert created.status == "validating" and created.metadata == {"job": "eval-1"}
    batch = finished(client, created.id)
    assert batch.status == "completed", batch
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed) == (6, 5)
    assert batch.request_counts.failed == 1
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at
    raw = raw_batch(stack, batch.id, key["key"])
    assert raw["created_at"] <= raw["in_progress_at"] <= raw["finalizing_at"]
    assert raw["finalizing_at"] <= raw["completed_at"]
    assert raw["expires_at"] == raw["created_at"] + 24 * 3600
    assert not {"failed_at", "expired_at", "cancelling_at", "cancelled_at"} & set(raw)
    assert "model" not in raw  # its lines ask for two models

    output = lines_of(client, batch.output_file_id)
    assert [line["custom_id"] for line in output] == [f"req-{n}" for n in range(5)]
    for line in output:
        assert line["error"] is None and line["response"]["status_code"] == 200
        conforms("CreateChatCompletionResponse", line["response"]["body"])
        assert line["response"]["request_id"].startswith("batch_req_")
    errors = lines_of(client, batch.error_file_id)
    assert [line["custom_id"] for line in errors] == ["forbidden"]
    assert errors[0]["response"]["status_code"] == 403
    assert errors[0]["response"]["body"]["error"]["code"] == "model_not_allowed"
    assert upstream.requests == 5  # the forbidden line never reached an upstream
    assert {m["content"] for body in upstream.received for m in body["messages"]} == {
        f"line {n}" for n in range(5)
    }
    output_file = client.files.retrieve(batch.output_file_id)
    assert output_file.purpose == "batch_output"

    # Every line that ran is a ledger row of the key, marked with the batch.
    assert stack.auth is not None
    deadline = time.monotonic() + 5
    while True:
        with stack.auth.store.engine.connect() as connection:
            rows = connection.execute(
                text("select batch_id, status from usage_records where key_id = :k"),
                {"k": key["id"]},
            ).all()
        if len(rows) >= 5 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert sorted(rows) == [(batch.id, 200)] * 5
    totals = usage(stack.base_url, batch_id=batch.id)
    assert totals[0]["requests"] == 5 and totals[0]["output_tokens"] > 0
    # The batch's usage is its succeeded lines' tokens, as the ledger has them.
    assert raw["usage"] == {
        "input_tokens": totals[0]["input_tokens"],
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": totals[0]["output_tokens"],
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": totals[0]["input_tokens"] + totals[0]["output_tokens"],
    }
    assert raw["usage"]["input_tokens"] == 5 * PROMPT_TOKENS  # as the upstream reported
    assert batch.usage is not None and batch.usage.total_tokens == raw["usage"]["total_tokens"]


def test_completions_and_embeddings_batches(stack: Stack, upstream: FakeUpstream) -> None:
    client = stack.sdk()
    upstream.default = Reply.text("Once", " upon")
    completions = upload(
        client,
        jsonl(
            [
                {
                    "custom_id": f"c{n}",
                    "method": "POST",
                    "url": "/v1/completions",
                    "body": {"model": "fake", "prompt": f"story {n}", "max_tokens": 5},
                }
                for n in range(3)
            ]
        ),
    )
    embeddings = upload(
        client,
        jsonl(
            [
                {
                    "custom_id": f"e{n}",
                    "method": "POST",
                    "url": "/v1/embeddings",  # with /v1 or without, as OpenAI takes it
                    "body": {"model": model, "input": f"text {n}"},
                }
                for n, model in enumerate(["fake", "e5", "fake"])
            ]
        ),
    )
    first = client.batches.create(
        input_file_id=completions, endpoint="/v1/completions", completion_window="24h"
    )
    second = client.batches.create(
        input_file_id=embeddings, endpoint="/v1/embeddings", completion_window="24h"
    )
    done = finished(client, first.id)
    assert done.status == "completed" and done.error_file_id is None
    assert done.model == "fake" and raw_batch(stack, done.id)["model"] == "fake"
    assert done.usage is not None and done.usage.output_tokens == 3 * 2  # two chunks a line
    for line in lines_of(client, done.output_file_id):
        conforms("CreateCompletionResponse", line["response"]["body"])
        assert line["response"]["body"]["choices"][0]["text"] == "Once upon"
    done = finished(client, second.id, timeout=60)
    assert done.status == "completed", done
    output = lines_of(client, done.output_file_id)
    assert [line["custom_id"] for line in output] == ["e0", "e1", "e2"]
    for line in output:
        conforms("CreateEmbeddingResponse", line["response"]["body"])


def test_a_malformed_file_fails_the_batch_with_every_line_named(stack: Stack) -> None:
    client = stack.sdk()
    content = b"\n".join(
        [
            orjson.dumps(chat_line("a")),
            b"{not json",
            orjson.dumps(chat_line("a")),  # duplicate custom_id
            orjson.dumps({**chat_line("b"), "url": "/v1/embeddings"}),
            orjson.dumps({**chat_line("c"), "method": "GET"}),
            orjson.dumps({"custom_id": "d", "method": "POST", "url": "/v1/chat/completions"}),
            orjson.dumps({**chat_line("e"), "body": {"messages": []}}),
        ]
    )
    created = client.batches.create(
        input_file_id=upload(client, content),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    batch = finished(client, created.id)
    assert batch.status == "failed" and batch.failed_at
    assert batch.errors is not None and batch.errors.data is not None
    assert [(e.line, e.code) for e in batch.errors.data] == [
        (2, "invalid_json_line"),
        (3, "duplicate_custom_id"),
        (4, "mismatched_url"),
        (5, "invalid_method"),
        (6, "invalid_body"),
        (7, "missing_model"),
    ]
    assert batch.output_file_id is None
    raw_batch(stack, batch.id)


def test_create_is_checked_up_front_and_batches_are_team_scoped(stack: Stack) -> None:
    mine = stack.sdk(create_key(stack.base_url, team="team-a")["key"])
    theirs = stack.sdk(create_key(stack.base_url, team="team-b")["key"])
    good = upload(mine, jsonl([chat_line("x")]))
    wrong_purpose = upload(mine, jsonl([chat_line("x")]), purpose="user_data")

    with pytest.raises(openai.BadRequestError) as refused:
        mine.batches.create(
            input_file_id=wrong_purpose, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert refused.value.body["param"] == "input_file_id"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):  # another team's file
        theirs.batches.create(
            input_file_id=good, endpoint="/v1/chat/completions", completion_window="24h"
        )
    for body, param in (
        ({"endpoint": "/v1/images", "completion_window": "24h"}, "endpoint"),
        ({"endpoint": "/v1/completions", "completion_window": "1h"}, "completion_window"),
        ({"completion_window": "24h"}, "endpoint"),
        ({"endpoint": "/v1/completions", "completion_window": "24h", "metadata": [1]}, "metadata"),
    ):
        answer = httpx.post(
            f"{stack.base_url}/batches",
            headers={"authorization": f"Bearer {mine.api_key}"},
            json={"input_file_id": good, **body},
        )
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["param"] == param
        conforms("ErrorResponse", answer.json())

    made = [
        mine.batches.create(
            input_file_id=good, endpoint="/v1/chat/completions", completion_window="24h"
        ).id
        for _ in range(3)
    ]
    with pytest.raises(openai.NotFoundError):
        theirs.batches.retrieve(made[0])
    with pytest.raises(openai.NotFoundError):
        theirs.batches.cancel(made[0])
    assert [b.id for b in theirs.batches.list()] == []
    page = mine.batches.list(limit=2)
    assert [b.id for b in page.data] == made[::-1][:2] and page.has_more
    rest = mine.batches.list(limit=2, after=made[1])
    assert [b.id for b in rest.data] == [made[0]] and not rest.has_more
    listing = httpx.get(
        f"{stack.base_url}/v1/batches", headers={"authorization": f"Bearer {mine.api_key}"}
    ).json()
    conforms("ListBatchesResponse", listing)
    missing = httpx.get(
        f"{stack.base_url}/v1/batches/batch_nope",
        headers={"authorization": f"Bearer {mine.api_key}"},
    )
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "batch_id"
    for batch_id in made:
        finished(mine, batch_id)


def test_cancel_stops_new_lines_and_lists_the_unrun_ones(
    stack: Stack, upstream: FakeUpstream
) -> None:
    client = stack.sdk()
    upstream.default = Reply.stream("slow", first_delay_s=0.3)
    created = client.batches.create(
        input_file_id=upload(client, jsonl([chat_line(f"r{n}") for n in range(20)])),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    wait_for(client, created.id, lambda b: b.request_counts.completed >= 2)
    cancelling = client.batches.cancel(created.id)
    assert cancelling.status in ("cancelling", "cancelled")
    batch = finished(client, created.id)
    assert batch.status == "cancelled" and batch.cancelled_at and batch.cancelling_at
    raw = raw_batch(stack, batch.id)
    assert raw["in_progress_at"] <= raw["cancelling_at"] <= raw["cancelled_at"]
    assert not {"finalizing_at", "completed_at", "failed_at", "expired_at"} & set(raw)
    counts = batch.request_counts
    assert counts.total == 20 and counts.completed + counts.failed == 20
    assert 2 <= counts.completed < 20
    assert upstream.requests == counts.completed  # nothing ran that is not counted
    unrun = lines_of(client, batch.error_file_id)
    assert unrun and all(line["error"]["code"] == "batch_cancelled" for line in unrun)
    ran = {line["custom_id"] for line in lines_of(client, batch.output_file_id)}
    assert ran.isdisjoint(line["custom_id"] for line in unrun)
    with pytest.raises(openai.UnprocessableEntityError):
        client.batches.cancel(
            finished(
                client,
                client.batches.create(
                    input_file_id=upload(client, jsonl([chat_line("z")])),
                    endpoint="/v1/chat/completions",
                    completion_window="24h",
                ).id,
            ).id
        )


def test_a_batch_resumes_after_the_edge_restarts_without_running_a_line_twice(
    stack: Stack, upstream: FakeUpstream
) -> None:
    client = stack.sdk()
    upstream.default = Reply.stream("slow", first_delay_s=0.2)
    created = client.batches.create(
        input_file_id=upload(
            client, jsonl([chat_line(f"r{n}", content=f"r{n}") for n in range(16)])
        ),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    wait_for(client, created.id, lambda b: b.request_counts.completed >= 3)
    stack.loop.run(stack.stop_edge())
    stopped_at = upstream.requests
    assert stopped_at < 16
    stack.loop.run(stack.start_edge(**stack.edge_overrides))
    client = stack.sdk()
    batch = finished(client, created.id)
    assert batch.status == "completed" and batch.request_counts.completed == 16
    contents = [m["content"] for body in upstream.received for m in body["messages"]]
    assert sorted(contents) == sorted(f"r{n}" for n in range(16))  # each line once
    output = lines_of(client, batch.output_file_id)
    assert [line["custom_id"] for line in output] == [f"r{n}" for n in range(16)]


def test_lines_still_running_when_a_stopping_edges_grace_ends_are_not_run_again(
    stack: Stack, upstream: FakeUpstream
) -> None:
    """SIGTERM gives running lines a grace period; two lines outlast it. The next
    worker does not send them again: they are interrupted, the rest complete."""
    from edge.config import BatchSettings

    upstream.queue(*[Reply.stream("slow", first_delay_s=3.0)] * 2)
    upstream.default = Reply.stream("fast")
    stack.loop.run(stack.stop_edge())
    short = BatchSettings(
        concurrency=2, live_threshold=1, lease_s=3.0, poll_s=0.1, stop_grace_s=0.2
    )
    stack.loop.run(stack.start_edge(batch=short))
    client = stack.sdk()
    created = client.batches.create(
        input_file_id=upload(
            client, jsonl([chat_line(f"r{n}", content=f"r{n}") for n in range(8)])
        ),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    upstream.wait_for(lambda: upstream.active == 2, timeout=10)  # both slow lines out
    stack.loop.run(stack.stop_edge())
    stack.loop.run(stack.start_edge(**stack.edge_overrides))
    client = stack.sdk()
    batch = finished(client, created.id)
    assert batch.status == "completed", batch
    sent = [m["content"] for body in upstream.received for m in body["messages"]]
    assert sorted(sent) == sorted(f"r{n}" for n in range(8))  # each line sent once
    interrupted = lines_of(client, batch.error_file_id)
    assert [line["custom_id"] for line in interrupted] == ["r0", "r1"]
    assert {line["error"]["code"] for line in interrupted} == {"batch_line_interrupted"}
    output = lines_of(client, batch.output_file_id)
    assert [line["custom_id"] for line in output] == [f"r{n}" for n in range(2, 8)]
    counts = batch.request_counts
    assert (counts.total, counts.completed, counts.failed) == (8, 6, 2)
    upstream.wait_for(lambda: upstream.active == 0, timeout=10)  # the slow answers end


def test_live_requests_go_first_while_a_batch_runs(
    stack: Stack, upstream: FakeUpstream, live_upstream: FakeUpstream
) -> None:
    client = stack.sdk()
    upstream.default = Reply.stream("batch", first_delay_s=0.1)
    live_upstream.default = Reply.stream("live", first_delay_s=2.0)
    created = client.batches.create(
        input_file_id=upload(client, jsonl([chat_line(f"r{n}") for n in range(40)])),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    wait_for(client, created.id, lambda b: b.request_counts.completed >= 2)
    answered: list[float] = []

    def live() -> None:
        start = time.monotonic()
        client.chat.completions.create(model="live", messages=[{"role": "user", "content": "x"}])
        answered.append(time.monotonic() - start)

    caller = threading.Thread(target=live)
    caller.start()
    live_upstream.wait_for(lambda: live_upstream.requests == 1)
    # Lines started before it end (a line admitted before it may reach the
    # upstream after it: the worker, not the upstream, knows when all have ended).
    worker = stack.gateway.batch_worker
    upstream.wait_for(lambda: worker.lines_in_flight == 0 and upstream.active == 0)
    during = upstream.requests
    time.sleep(0.5)
    assert live_upstream.active == 1  # the live request is still in flight …
    assert upstream.requests == during  # … and no batch line started meanwhile
    assert worker.lines_in_flight == 0
    caller.join(10)
    assert answered and answered[0] < 3.0  # the live request did not queue behind the batch
    upstream.wait_for(lambda: upstream.requests > during, timeout=5)  # the batch goes on
    client.batches.cancel(created.id)
    finished(client, created.id)


def test_a_key_limited_to_one_request_at_a_time_runs_its_batch_within_it(
    stack: Stack, upstream: FakeUpstream
) -> None:
    key = create_key(stack.base_url, team="tight", limits={"max_concurrent": 1})
    client = stack.sdk(key["key"])
    upstream.default = Reply.stream("one", first_delay_s=0.2)
    seen: list[int] = []
    created = client.batches.create(
        input_file_id=upload(client, jsonl([chat_line(f"r{n}") for n in range(4)])),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    deadline = time.monotonic() + 30
    while client.batches.retrieve(created.id).status not in FINAL:
        seen.append(upstream.active)
        assert time.monotonic() < deadline
        time.sleep(0.02)
    batch = client.batches.retrieve(created.id)
    assert batch.status == "completed" and batch.request_counts.completed == 4, batch
    assert max(seen) <= 1  # the batch's two slots never ran two lines at once


def test_a_key_with_an_rpm_limit_runs_its_batch_within_it(
    stack: Stack, upstream: FakeUpstream
) -> None:
    """rpm is a token bucket (services/auth/limiter.py): `rpm` at once, then one
    every 60/rpm s. A line refused by it waits and runs again: none fails."""
    rpm, count = 30, 34
    key = create_key(stack.base_url, team="paced", limits={"rpm": rpm})
    client = stack.sdk(key["key"])
    created = client.batches.create(
        input_file_id=upload(client, jsonl([chat_line(f"r{n}") for n in range(count)])),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    batch = finished(client, created.id, timeout=60)
    assert batch.status == "completed", batch
    counts = batch.request_counts
    assert (counts.total, counts.completed, counts.failed) == (count, count, 0)
    assert batch.error_file_id is None
    arrived = list(upstream.arrived)
    assert len(arrived) == count
    # Within the bucket: any run of requests fits its capacity plus what refilled
    # meanwhile (one request of slack for the time from reserve to arrival).
    for first in range(count):
        for last in range(first, count):
            refilled = (arrived[last] - arrived[first]) * rpm / 60
            assert last - first + 1 <= rpm + refilled + 1, (first, last, arrived)
    assert arrived[-1] - arrived[0] >= (count - rpm - 1) * 60 / rpm
    # The lines were refused (and waited), not failed: no ledger row for a refusal.
    refused = stack.gateway.limiter.rate_limited
    assert refused.get(("rpm", "key", "paced"), 0) > 0, refused

    def ledger_rows() -> int:
        totals = usage(stack.base_url, key_id=key["id"])
        return int(totals[0]["requests"]) if totals else 0

    deadline = time.monotonic() + 5
    while ledger_rows() < count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ledger_rows() == count


def test_a_batch_past_its_window_expires_keeping_what_finished(
    stack: Stack, upstream: FakeUpstream
) -> None:
    client = stack.sdk()
    upstream.default = Reply.stream("slow", first_delay_s=0.2)
    created = client.batches.create(
        input_file_id=upload(client, jsonl([chat_line(f"r{n}") for n in range(20)])),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    wait_for(client, created.id, lambda b: b.request_counts.completed >= 2)
    assert stack.files is not None  # the window ends now (24 h are not waited for)
    stack.files.batches.store.set_fields(
        created.id, ("in_progress",), expires_at=int(time.time()) - 1
    )
    batch = finished(client, created.id)
    assert batch.status == "expired" and batch.expired_at
    counts = batch.request_counts
    assert 2 <= counts.completed < 20 and counts.completed + counts.failed == 20
    kept = lines_of(client, batch.output_file_id)
    assert len(kept) == counts.completed and all(
        line["response"]["status_code"] == 200 for line in kept
    )
    expired = lines_of(client, batch.error_file_id)
    assert expired and {line["error"]["code"] for line in expired} == {"batch_expired"}
    raw_batch(stack, batch.id)


def test_an_input_file_deleted_before_the_batch_runs_fails_it(stack: Stack) -> None:
    client = stack.sdk()
    worker = stack.gateway.batch_worker
    stack.loop.run(worker.close())  # no worker while the file goes away
    try:
        file_id = upload(client, jsonl([chat_line("a")]))
        created = client.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        client.files.delete(file_id)
    finally:
        stack.loop.loop.call_soon_threadsafe(worker.start)
    batch = finished(client, created.id)
    assert batch.status == "failed"
    assert batch.errors is not None and batch.errors.data is not None
    assert [e.code for e in batch.errors.data] == ["input_file_not_found"]


def test_revoking_the_key_stops_its_batch(stack: Stack, upstream: FakeUpstream) -> None:
    key = create_key(stack.base_url, team="revoked-team")
    reader = stack.sdk(create_key(stack.base_url, team="revoked-team")["key"])
    client = stack.sdk(key["key"])
    upstream.default = Reply.stream("slow", first_delay_s=0.2)
    created = client.batches.create(
        input_file_id=upload(client, jsonl([chat_line(f"r{n}") for n in range(40)])),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    wait_for(client, created.id, lambda b: b.request_counts.completed >= 2)
    revoked = httpx.delete(f"{stack.base_url}/v1/admin/keys/{key['id']}", headers=ADMIN)
    assert revoked.status_code == 200
    batch = finished(reader, created.id)  # the team's other key still sees it
    assert batch.status == "failed" and batch.errors is not None
    assert [e.code for e in batch.errors.data or []] == ["key_revoked"]
    counts = batch.request_counts
    assert counts.completed + counts.failed == 40 and counts.completed < 40
    assert len(lines_of(reader, batch.output_file_id)) == counts.completed
    assert {line["error"]["code"] for line in lines_of(reader, batch.error_file_id)} == {
        "key_revoked"
    }
