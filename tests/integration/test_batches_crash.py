"""An edge killed (SIGKILL) mid-batch: once its lease runs out another edge
takes the batch over and finishes it. No line is lost and none reaches the
upstream twice, counted from the fake upstream's received requests: recorded
lines are not run again, and the lines in flight at the kill (marked started,
never recorded) go to the error file as interrupted instead of running again."""

from __future__ import annotations

import collections
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.config import BatchSettings
from tests.fake_upstream import FakeUpstream, Reply
from tests.integration.test_batches import chat_line, finished, jsonl, lines_of, upload, wait_for
from tests.processes import free_port, spawn, stop
from tests.processes import wait_for as wait_until
from tests.stack import Stack

LINES = 24
CONCURRENCY = 2


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream("crash").start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream) -> Iterator[Stack]:
    root = Path(tmp_path_factory.mktemp("batch-crash"))
    config = root / "models.yaml"
    config.write_text(
        "models:\n  - name: fake\n    backend: openai\n"
        f"    upstreams: [{{url: '{upstream.url}'}}]\n"
    )
    # This in-process edge only serves the API; the edges under test run as processes.
    running = Stack(
        data_dir=root, models_config=config, edge_overrides={"batch": BatchSettings(enabled=False)}
    ).start()
    yield running
    running.stop()


def edge(stack: Stack, tmp_path: Path, name: str) -> subprocess.Popen[bytes]:
    port = free_port()
    process = spawn(
        ["-m", "edge"],
        {
            "AQUEDUCT_HTTP_PORT": str(port),
            "AQUEDUCT_AUTH_ADDR": stack.address("auth"),
            "AQUEDUCT_FILES_ADDR": stack.address("files"),
            "AQUEDUCT_INFERENCE_ADDR": stack.address("inference"),
            "AQUEDUCT_BATCH_LEASE_S": "2",
            "AQUEDUCT_BATCH_CONCURRENCY": str(CONCURRENCY),
        },
        tmp_path / f"{name}.log",
    )

    def listening() -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    wait_until(listening, 30, f"edge {name} to listen")
    return process


def test_a_killed_edges_batch_is_finished_by_the_next_without_a_line_lost_or_sent_twice(
    stack: Stack, upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.default = Reply.stream("ok", first_delay_s=0.5)
    client = stack.sdk()
    everything = {f"r{n}" for n in range(LINES)}
    created = client.batches.create(
        input_file_id=upload(
            client, jsonl([chat_line(f"r{n}", content=f"r{n}") for n in range(LINES)])
        ),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    first = edge(stack, tmp_path, "first")
    try:
        wait_for(client, created.id, lambda b: b.request_counts.completed >= 4, timeout=30)
        upstream.wait_for(lambda: upstream.active >= 1, timeout=10)  # a line mid-answer
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
        recorded = client.batches.retrieve(created.id).request_counts.completed
        assert recorded < LINES
    finally:
        stop(first)
    second = edge(stack, tmp_path, "second")
    try:
        batch = finished(client, created.id, timeout=60)
    finally:
        stop(second)
    assert batch.status == "completed", batch
    output = lines_of(client, batch.output_file_id)
    errors = lines_of(client, batch.error_file_id)
    answered = [line["custom_id"] for line in output]
    interrupted = [line["custom_id"] for line in errors]

    # Not one request reached the upstream twice.
    sent = collections.Counter(m["content"] for body in upstream.received for m in body["messages"])
    assert max(sent.values()) == 1, sent
    # Not one line lost: each is in the output or the error file, once.
    assert len(answered) + len(interrupted) == LINES
    assert set(answered) | set(interrupted) == everything
    assert all(sent[custom_id] == 1 for custom_id in answered)
    # The interrupted lines are those in flight at the kill (at most one per
    # slot, at least the one the upstream was answering): failed, never rerun.
    assert 1 <= len(interrupted) <= CONCURRENCY, interrupted
    assert set(interrupted) & set(sent), (interrupted, sent)
    assert everything - set(sent) <= set(interrupted)  # a line never sent was started, at most
    for line in errors:
        assert line["response"] is None
        assert line["error"]["code"] == "batch_line_interrupted"
        assert "not run again" in line["error"]["message"]
    counts = batch.request_counts
    assert (counts.total, counts.completed, counts.failed) == (
        LINES,
        len(answered),
        len(interrupted),
    )
