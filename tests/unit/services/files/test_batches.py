"""The batch records' domain: create checks, the lifecycle, the lease, idempotent
line records, cancel rules, and the output files. Real SQLite and a real folder."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from core.errors import Kind, ServiceError
from services.files.batch_records import LineResult
from services.files.batch_store import BatchStore
from services.files.batches import BatchBook
from services.files.extractor import Extractor
from services.files.library import FileLibrary, Limits
from services.files.records import UploadMetadata
from services.files.storage import LocalBlobStore
from services.files.store import FileStore

MB = 1024 * 1024


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def book(tmp_path: Path, clock: Clock) -> Iterator[BatchBook]:
    store = FileStore(f"sqlite:///{tmp_path / 'files.db'}")
    store.migrate()
    blobs = LocalBlobStore(tmp_path / "files")
    blobs.prepare()
    library = FileLibrary(store, blobs, Extractor(timeout_s=5, workers=1), Limits(MB, 0, MB), clock)
    yield BatchBook(BatchStore(store), library, clock)
    store.close()


async def parts(*items: UploadMetadata | bytes) -> AsyncIterator[UploadMetadata | bytes]:
    for item in items:
        yield item


def input_file(book: BatchBook, team: str = "t", purpose: str = "batch") -> str:
    record = asyncio.run(
        book.files.upload(parts(UploadMetadata(team, "in.jsonl", purpose), b'{"x": 1}\n'))
    )
    return record.id


def create(book: BatchBook, file_id: str, team: str = "t") -> str:
    made = asyncio.run(book.create(team, "key", file_id, "/v1/chat/completions", "24h", {}))
    return made.id


def refused(kind: Kind, reason: str, call: object) -> None:
    with pytest.raises(ServiceError) as error:
        asyncio.run(call)  # type: ignore[arg-type]
    assert (error.value.kind, error.value.reason) == (kind, reason)


def test_create_checks_the_file_endpoint_and_window(book: BatchBook) -> None:
    good = input_file(book)
    refused(
        Kind.INVALID_ARGUMENT,
        "INPUT_FILE_PURPOSE",
        book.create("t", "k", input_file(book, purpose="user_data"), "/v1/embeddings", "24h", {}),
    )
    refused(
        Kind.NOT_FOUND,
        "FILE_NOT_FOUND",
        book.create("other", "k", good, "/v1/embeddings", "24h", {}),
    )
    refused(
        Kind.INVALID_ARGUMENT, "ENDPOINT_INVALID", book.create("t", "k", good, "/v1/x", "24h", {})
    )
    refused(
        Kind.INVALID_ARGUMENT,
        "COMPLETION_WINDOW_INVALID",
        book.create("t", "k", good, "/v1/embeddings", "1h", {}),
    )
    batch_id = create(book, good)
    made = asyncio.run(book.get("t", batch_id))
    assert made.status == "validating" and made.expires_at == made.created_at + 24 * 3600
    refused(Kind.NOT_FOUND, "BATCH_NOT_FOUND", book.get("other", batch_id))


def test_one_lease_at_a_time_and_a_dead_workers_lease_runs_out(
    book: BatchBook, clock: Clock
) -> None:
    batch_id = create(book, input_file(book))
    first = asyncio.run(book.claim("w1", 30))
    assert first is not None and first.id == batch_id
    assert asyncio.run(book.claim("w2", 30)) is None
    refused(Kind.FAILED_PRECONDITION, "LEASE_LOST", book.renew(batch_id, "w2", 30))
    clock.now += 31  # w1 died: its lease ran out
    second = asyncio.run(book.claim("w2", 30))
    assert second is not None and second.id == batch_id
    refused(Kind.FAILED_PRECONDITION, "LEASE_LOST", book.record(batch_id, "w1", []))


def test_lines_are_recorded_once_and_a_resumed_batch_skips_them(book: BatchBook) -> None:
    batch_id = create(book, input_file(book))
    asyncio.run(book.claim("w", 30))
    started, done, interrupted = asyncio.run(book.start(batch_id, "w", 3))
    assert started.status == "in_progress" and started.total == 3 and done == []
    assert interrupted == []
    ok = LineResult(0, "a", True, b'{"custom_id": "a"}')
    asyncio.run(book.record(batch_id, "w", [ok]))
    again = asyncio.run(book.record(batch_id, "w", [ok, LineResult(2, "c", False, b'{"c": 1}')]))
    assert (again.completed, again.failed) == (1, 1)
    resumed, done, interrupted = asyncio.run(book.start(batch_id, "w", 3))
    assert interrupted == []  # recorded lines are done, not interrupted
    assert resumed.status == "in_progress" and sorted(done) == [0, 2]
    asyncio.run(book.record(batch_id, "w", [LineResult(1, "b", True, b'{"custom_id": "b"}')]))
    finished = asyncio.run(book.finish(batch_id, "w", "completed", []))
    assert finished.status == "completed" and finished.finalizing_at and finished.completed_at
    output = asyncio.run(book.files.content("t", finished.output_file_id))
    record, chunks = output

    async def read() -> bytes:
        return b"".join([chunk async for chunk in chunks])

    assert record.purpose == "batch_output"
    assert asyncio.run(read()) == b'{"custom_id": "a"}\n{"custom_id": "b"}\n'  # input order
    assert finished.error_file_id
    # A retried finish changes nothing; a finished batch cannot be cancelled.
    assert asyncio.run(book.finish(batch_id, "w", "completed", [])) == finished
    refused(Kind.FAILED_PRECONDITION, "BATCH_NOT_CANCELLABLE", book.cancel("t", batch_id))


def test_cancel_marks_cancelling_until_the_worker_ends_it(book: BatchBook) -> None:
    batch_id = create(book, input_file(book))
    cancelling = asyncio.run(book.cancel("t", batch_id))
    assert cancelling.status == "cancelling" and cancelling.cancelling_at
    assert asyncio.run(book.cancel("t", batch_id)).status == "cancelling"  # idempotent
    asyncio.run(book.claim("w", 30))
    started, _, _ = asyncio.run(book.start(batch_id, "w", 2))
    assert started.status == "cancelling" and started.total == 2
    ended = asyncio.run(book.finish(batch_id, "w", "cancelled", []))
    assert ended.status == "cancelled" and ended.cancelled_at and not ended.output_file_id


def test_a_cancel_after_the_last_line_ran_ends_the_batch_cancelled(book: BatchBook) -> None:
    batch_id = create(book, input_file(book))
    asyncio.run(book.claim("w", 30))
    asyncio.run(book.start(batch_id, "w", 1))
    asyncio.run(book.record(batch_id, "w", [LineResult(0, "a", True, b"{}")]))
    assert asyncio.run(book.cancel("t", batch_id)).status == "cancelling"  # the owner is told
    ended = asyncio.run(book.finish(batch_id, "w", "completed", []))  # the worker had not seen it
    assert ended.status == "cancelled" and ended.cancelled_at and not ended.completed_at
    assert ended.output_file_id  # the line that ran is kept


def test_a_finalizing_batch_refuses_a_cancel(book: BatchBook) -> None:
    batch_id = create(book, input_file(book))
    asyncio.run(book.claim("w", 30))
    asyncio.run(book.start(batch_id, "w", 1))
    book.store.set_fields(batch_id, ("in_progress",), status="finalizing")
    with pytest.raises(ServiceError) as refused:
        asyncio.run(book.cancel("t", batch_id))
    assert refused.value.reason == "BATCH_NOT_CANCELLABLE"


def test_results_over_the_team_quota_fail_the_batch_instead_of_looping(book: BatchBook) -> None:
    file_id = input_file(book)
    book.files.limits = Limits(MB, 20, MB)  # the input (9 bytes) fits, the results do not
    batch_id = create(book, file_id)
    asyncio.run(book.claim("w", 30))
    asyncio.run(book.start(batch_id, "w", 1))
    asyncio.run(book.record(batch_id, "w", [LineResult(0, "a", True, b"x" * 64)]))
    ended = asyncio.run(book.finish(batch_id, "w", "completed", []))
    assert ended.status == "failed" and ended.failed_at
    assert [e.code for e in ended.errors] == ["storage_quota_exceeded"]
    assert asyncio.run(book.claim("w2", 30)) is None  # nothing left to retry
