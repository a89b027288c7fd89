"""The files service's domain: uploads, limits, quota, listing, isolation, expiry,
and extraction in worker processes. Real SQLite and a real folder, no gRPC."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from core.errors import Kind, ServiceError
from services.files.extract import ExtractError
from services.files.extractor import ExtractionTimeout, Extractor
from services.files.library import FileLibrary, Limits
from services.files.records import FileRecord, UploadMetadata
from services.files.storage import LocalBlobStore
from services.files.store import FileStore
from tests.pdfs import make_pdf

T = TypeVar("T")
MB = 1024 * 1024


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


_runner: asyncio.Runner | None = None


@pytest.fixture(autouse=True)
def runner() -> Iterator[asyncio.Runner]:
    """One event loop per test: extraction workers belong to the loop that started them."""
    global _runner
    with asyncio.Runner() as one:
        _runner = one
        yield one
    _runner = None


def run(coro: Coroutine[Any, Any, T]) -> T:
    assert _runner is not None
    return _runner.run(coro)


@pytest.fixture
def library(tmp_path: Path, clock: Clock, runner: asyncio.Runner) -> Iterator[FileLibrary]:
    store = FileStore(f"sqlite:///{tmp_path / 'files.db'}")
    store.migrate()
    blobs = LocalBlobStore(tmp_path / "files")
    blobs.prepare()
    limits = Limits(max_file_bytes=1 * MB, team_quota_bytes=3 * MB, max_extract_bytes=2 * MB)
    extractor = Extractor(timeout_s=20, workers=1)
    yield FileLibrary(store, blobs, extractor, limits, clock)
    runner.run(extractor.close())
    store.close()


def meta(
    team: str = "t", name: str = "a.txt", purpose: str = "user_data", **kw: Any
) -> UploadMetadata:
    return UploadMetadata(team=team, filename=name, purpose=purpose, **kw)


async def parts(*items: UploadMetadata | bytes) -> AsyncIterator[UploadMetadata | bytes]:
    for item in items:
        yield item


def upload(library: FileLibrary, *items: UploadMetadata | bytes) -> FileRecord:
    return run(library.upload(parts(*items)))


def stored_files(library: FileLibrary) -> list[Path]:
    root = library.blobs.root  # type: ignore[attr-defined]
    return [p for p in Path(root).rglob("*") if p.is_file()]


def refused(library: FileLibrary, *items: UploadMetadata | bytes) -> ServiceError:
    with pytest.raises(ServiceError) as caught:
        upload(library, *items)
    return caught.value


def test_upload_then_read_back(library: FileLibrary) -> None:
    record = upload(library, meta(name="dir/notes.md"), b"hello ", b"world")
    assert record.id.startswith("file-") and len(record.id) == 29
    assert (record.filename, record.bytes, record.content_type) == ("notes.md", 11, "text/markdown")
    assert record.expires_at is None

    async def read() -> bytes:
        _, chunks = await library.content("t", record.id)
        return b"".join([c async for c in chunks])

    assert run(read()) == b"hello world"
    assert run(library.get("t", record.id)) == record


def test_metadata_may_come_after_the_bytes(library: FileLibrary) -> None:
    record = upload(library, b"late ", b"metadata", meta(name="late.txt"))
    assert (record.filename, record.bytes) == ("late.txt", 13)


@pytest.mark.parametrize(
    ("items", "reason"),
    [
        ((b"no metadata",), "METADATA_MISSING"),
        ((meta(), meta(), b"x"), "METADATA_REPEATED"),
        ((b"x", meta(), b"y"), "METADATA_MISPLACED"),
        ((meta(),), "FILE_EMPTY"),
        ((meta(purpose="homework"), b"x"), "PURPOSE_INVALID"),
        ((meta(team=""), b"x"), "TEAM_MISSING"),
        ((meta(name="/"), b"x"), "FILENAME_MISSING"),
    ],
)
def test_malformed_uploads_leave_nothing(
    library: FileLibrary, items: tuple[UploadMetadata | bytes, ...], reason: str
) -> None:
    error = refused(library, *items)
    assert (error.kind, error.reason) == (Kind.INVALID_ARGUMENT, reason)
    assert stored_files(library) == []
    assert run(library.list("t", None, 0, None, True)) == ([], False)


def test_over_the_file_limit_is_refused_as_bytes_arrive(library: FileLibrary) -> None:
    error = refused(library, meta(name="big.bin"), b"x" * MB, b"x")
    assert error.reason == "FILE_TOO_LARGE" and error.param == "file"
    assert "'big.bin'" in error.message and "1.0 MB" in error.message
    assert stored_files(library) == []


def test_team_quota_counts_live_files_of_that_team_only(library: FileLibrary) -> None:
    for _ in range(3):
        upload(library, meta(), b"x" * MB)
    error = refused(library, meta(name="one-too-many.txt"), b"x")
    assert error.reason == "STORAGE_QUOTA_EXCEEDED"
    assert "3.0 MB" in error.message and "'one-too-many.txt'" in error.message
    assert upload(library, meta(team="other"), b"x").team == "other"
    assert len(stored_files(library)) == 4


def test_an_upload_that_fails_half_way_leaves_no_file_and_no_row(library: FileLibrary) -> None:
    async def broken() -> AsyncIterator[UploadMetadata | bytes]:
        yield meta()
        yield b"first half"
        raise ConnectionError("client went away")

    with pytest.raises(ConnectionError):
        run(library.upload(broken()))
    assert stored_files(library) == []
    assert run(library.list("t", None, 0, None, True)) == ([], False)


def test_other_teams_files_are_not_found(library: FileLibrary) -> None:
    record = upload(library, meta(team="mine"), b"x")
    for call in (library.get, library.delete, library.content, library.extract_stored):
        with pytest.raises(ServiceError) as caught:
            run(call("theirs", record.id))  # type: ignore[operator]
        assert caught.value.kind == Kind.NOT_FOUND
    assert run(library.get("mine", record.id)) == record
    for bad_id in ("file-../../etc/passwd", "", "file-short"):
        with pytest.raises(ServiceError):
            run(library.get("mine", bad_id))


def test_listing_orders_pages_and_filters(library: FileLibrary, clock: Clock) -> None:
    ids = []
    for index in range(5):
        purpose = "batch" if index == 2 else "user_data"
        ids.append(upload(library, meta(name=f"{index}.txt", purpose=purpose), b"x").id)
    newest_first, more = run(library.list("t", None, 0, None, False))
    assert [r.id for r in newest_first] == ids[::-1] and not more
    page, more = run(library.list("t", None, 2, None, True))
    assert [r.id for r in page] == ids[:2] and more
    page, more = run(library.list("t", None, 2, page[-1].id, True))
    assert [r.id for r in page] == ids[2:4] and more
    page, more = run(library.list("t", None, 2, page[-1].id, True))
    assert [r.id for r in page] == ids[4:] and not more
    batch, _ = run(library.list("t", "batch", 0, None, True))
    assert [r.id for r in batch] == [ids[2]]
    with pytest.raises(ServiceError) as caught:
        run(library.list("t", None, 0, "file-" + "x" * 24, True))
    assert caught.value.param == "after"


def test_delete_removes_row_and_bytes(library: FileLibrary) -> None:
    record = upload(library, meta(), b"x")
    assert run(library.delete("t", record.id)) == record
    assert stored_files(library) == []
    with pytest.raises(ServiceError):
        run(library.delete("t", record.id))


def test_expired_files_vanish_at_once_and_are_purged(library: FileLibrary, clock: Clock) -> None:
    short = upload(library, meta(expires_after_s=3600), b"x")
    keep = upload(library, meta(), b"y")
    batch = upload(library, meta(purpose="batch"), b"z")
    assert short.expires_at == short.created_at + 3600
    assert keep.expires_at is None
    assert batch.expires_at == batch.created_at + 30 * 24 * 3600  # OpenAI's batch default
    clock.now += 3600
    with pytest.raises(ServiceError):
        run(library.get("t", short.id))
    assert len(stored_files(library)) == 3
    assert run(library.purge_expired()) == 1
    assert len(stored_files(library)) == 2
    assert run(library.get("t", keep.id)) == keep


def test_extraction_of_stored_and_inline_files(library: FileLibrary) -> None:
    pdf = make_pdf(["Stored PDF text"])
    record = upload(library, meta(name="doc.pdf"), pdf)
    _, extracted = run(library.extract_stored("t", record.id))
    assert extracted.text == "Stored PDF text"
    assert run(library.extract_inline("inline.pdf", "application/pdf", pdf)).text == (
        "Stored PDF text"
    )
    with pytest.raises(ServiceError) as caught:
        run(library.extract_inline("bad.pdf", "application/pdf", b"%PDF-1.4 junk"))
    assert (caught.value.kind, caught.value.reason) == (Kind.INVALID_ARGUMENT, "FILE_CORRUPT")
    assert "'bad.pdf'" in caught.value.message
    with pytest.raises(ServiceError) as caught:
        run(library.extract_inline("huge.txt", "text/plain", b"x" * (2 * MB + 1)))
    assert caught.value.reason == "FILE_TOO_LARGE"


def test_an_extraction_past_its_deadline_is_killed_and_the_pool_recovers() -> None:
    async def scenario() -> None:
        hang = Extractor(
            timeout_s=0.5, workers=1, command=(sys.executable, "-c", "import time; time.sleep(60)")
        )
        started = asyncio.get_running_loop().time()
        with pytest.raises(ExtractionTimeout):
            await hang.run("slow.pdf", "", b"x")
        assert asyncio.get_running_loop().time() - started < 5
        assert hang._idle == []  # the stuck worker is gone, not reused
        await hang.close()
        healthy = Extractor(timeout_s=20, workers=2)
        results = await asyncio.gather(
            *(healthy.run(f"{i}.txt", "text/plain", f"text {i}".encode()) for i in range(4))
        )
        assert [r.text for r in results] == [f"text {i}" for i in range(4)]
        with pytest.raises(ExtractError):
            await healthy.run("x.json", "application/json", b"{")
        await healthy.close()

    run(scenario())


def test_a_worker_that_dies_is_reported_and_replaced() -> None:
    async def scenario() -> None:
        dying = Extractor(timeout_s=5, workers=1, command=(sys.executable, "-c", "pass"))
        from services.files.extractor import WorkerFailed

        with pytest.raises(WorkerFailed):
            await dying.run("a.txt", "", b"x")
        assert dying._idle == []

    run(scenario())


def test_an_idle_worker_exits_and_the_next_job_starts_one() -> None:
    async def scenario() -> None:
        extractor = Extractor(timeout_s=20, workers=1, idle_s=0.3)
        first = await extractor.run("a.txt", "text/plain", b"first")
        assert first.text == "first"
        [worker] = extractor._idle
        await asyncio.wait_for(worker.process.wait(), 5)  # it exits on its own
        assert extractor._idle == []
        second = await extractor.run("b.txt", "text/plain", b"second")
        assert second.text == "second"
        await extractor.close()

    run(scenario())


def test_a_worker_in_use_is_not_retired() -> None:
    async def scenario() -> None:
        extractor = Extractor(timeout_s=20, workers=1, idle_s=0.5)
        await extractor.run("a.txt", "text/plain", b"a")
        [worker] = extractor._idle
        for i in range(4):  # busy every 0.2 s: never idle for 0.5 s
            await asyncio.sleep(0.2)
            assert (await extractor.run(f"{i}.txt", "text/plain", b"x")).text == "x"
        assert extractor._idle == [worker] and worker.process.returncode is None
        await extractor.close()

    run(scenario())
