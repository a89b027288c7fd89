"""Batch workers sharing PostgreSQL: a batch's lease is held by one worker at a
time, so two edges never run the same line.

Against this machine's real PostgreSQL (CI starts it); elsewhere these skip.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.config import BatchSettings
from services.files.batch_records import BatchRecord
from services.files.batch_store import BatchStore
from services.files.store import FileStore
from tests.fake_upstream import FakeUpstream, Reply
from tests.integration.test_batches import chat_line, finished, jsonl, lines_of, upload
from tests.services_available import POSTGRES, fresh_postgres_database, listening
from tests.stack import Stack

pytestmark = pytest.mark.skipif(
    not listening(POSTGRES), reason="PostgreSQL is not running on 127.0.0.1:5432"
)


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    with fresh_postgres_database() as url:
        yield url


def test_concurrent_claims_lease_each_batch_to_one_worker(database: str) -> None:
    files = FileStore(database)
    files.migrate()
    store = BatchStore(files)
    now = int(time.time())
    ids = []
    for n in range(20):
        record = BatchRecord(
            id=f"batch_{n:024d}",
            team="t",
            key_id="k",
            endpoint="/v1/chat/completions",
            input_file_id="file-x",
            completion_window="24h",
            status="validating",
            created_at=now,
            expires_at=now + 3600,
        )
        store.insert(record)
        ids.append(record.id)

    def worker(name: str) -> list[str]:
        taken = []
        for _ in range(30):
            claimed = store.claim(name, time.time(), 60)
            if claimed is not None:
                taken.append(claimed.id)
        return taken

    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            claims = list(pool.map(worker, [f"w{n}" for n in range(8)]))
        every = [batch_id for taken in claims for batch_id in taken]
        assert sorted(every) == ids  # each batch leased once, none twice, none left
        assert not store.renew(ids[0], "not-the-holder", time.time(), 60)
    finally:
        files.close()


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream("pg-batch").start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def two_edges(
    tmp_path_factory: pytest.TempPathFactory, database: str, upstream: FakeUpstream
) -> Iterator[tuple[Stack, Any]]:
    root = Path(tmp_path_factory.mktemp("pg-batches"))
    config = root / "models.yaml"
    config.write_text(
        "models:\n  - name: fake\n    backend: openai\n"
        f"    upstreams: [{{url: '{upstream.url}'}}]\n"
    )
    batch = BatchSettings(concurrency=3, lease_s=3.0, poll_s=0.05)
    stack = Stack(
        data_dir=root, models_config=config, database_url=database, edge_overrides={"batch": batch}
    ).start()
    first = (stack.edge, stack.edge_task, stack.ports["edge"])
    stack.loop.run(stack.start_edge(batch=batch))  # a second edge, with its own worker
    second = (stack.edge, stack.edge_task, stack.ports["edge"])
    yield stack, first[0]
    stack.edge, stack.edge_task = first[0], first[1]
    stack.loop.run(stack.stop_edge())
    stack.edge, stack.edge_task = second[0], second[1]
    stack.stop()


def test_two_edges_run_batches_side_by_side_and_no_line_twice(
    two_edges: tuple[Stack, Any], upstream: FakeUpstream
) -> None:
    stack, first_edge = two_edges
    upstream.default = Reply.stream("ok", first_delay_s=0.05)
    client = stack.sdk()
    created = [
        client.batches.create(
            input_file_id=upload(
                client, jsonl([chat_line(f"b{b}-{n}", content=f"b{b}-{n}") for n in range(12)])
            ),
            endpoint="/v1/chat/completions",
            completion_window="24h",
        ).id
        for b in range(4)
    ]
    for batch_id in created:
        batch = finished(client, batch_id, timeout=60)
        assert batch.status == "completed" and batch.request_counts.completed == 12
        assert len(lines_of(client, batch.output_file_id)) == 12
    contents = [m["content"] for body in upstream.received for m in body["messages"]]
    assert sorted(contents) == sorted(f"b{b}-{n}" for b in range(4) for n in range(12))
    ran = [
        first_edge.config.app.app.state.gateway.batch_worker.lines_run,
        stack.gateway.batch_worker.lines_run,
    ]
    assert sum(ran) == 48 and min(ran) > 0, ran  # both edges worked, on different batches
