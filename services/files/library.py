"""The files service's domain logic: upload, read, list, delete, extract, purge.

No grpc here: the servicer translates protobuf to these calls. Metadata goes to
a FileStore, bytes to a BlobStore; blocking calls run in worker threads. An
upload becomes visible only when both its bytes and its row are in place, and a
failure at any point removes whatever it had written.
"""

from __future__ import annotations

import asyncio
import logging
import mimetypes
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass

from core.enum_names import FILE_PURPOSES
from core.errors import Kind, ServiceError
from services.files.extract import Extracted, ExtractError
from services.files.extractor import ExtractionTimeout, Extractor, WorkerFailed
from services.files.records import (
    DEFAULT_EXPIRY_S,
    FileRecord,
    UploadMetadata,
    clean_filename,
    is_file_id,
    new_file_id,
)
from services.files.storage import BlobStore, BlobWriter
from services.files.store import FileStore

log = logging.getLogger(__name__)

MB = 1024 * 1024
READ_CHUNK_BYTES = 1024 * 1024
MAX_LIST_LIMIT = 10_000
PURGE_BATCH = 500


@dataclass(frozen=True)
class Limits:
    max_file_bytes: int
    team_quota_bytes: int  # 0: unlimited
    max_extract_bytes: int


def _mb(size: int) -> str:
    return f"{size / MB:.1f} MB"


def _check_purpose(purpose: str) -> None:
    if purpose not in FILE_PURPOSES.by_name:
        raise _invalid(
            "PURPOSE_INVALID",
            f"'purpose' must be one of {', '.join(FILE_PURPOSES.names)}; got '{purpose}'.",
            "purpose",
        )


def _invalid(reason: str, message: str, param: str | None = None) -> ServiceError:
    return ServiceError(Kind.INVALID_ARGUMENT, reason, message, param)


def not_found(file_id: str) -> ServiceError:
    return ServiceError(
        Kind.NOT_FOUND, "FILE_NOT_FOUND", f"No such File object: {file_id}", "file_id"
    )


class FileLibrary:
    def __init__(
        self,
        store: FileStore,
        blobs: BlobStore,
        extractor: Extractor,
        limits: Limits,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.extractor = extractor
        self.limits = limits
        self.clock = clock
        # Quota check and insert happen together; in one process this lock makes
        # two concurrent uploads of a team unable to both squeeze under the quota.
        self._commit = asyncio.Lock()

    # --- upload ---------------------------------------------------------------

    async def upload(self, parts: AsyncIterator[UploadMetadata | bytes]) -> FileRecord:
        """Store a file from a stream of one metadata item and byte chunks.

        The metadata comes first or, for callers that learn it after the bytes,
        last; limits are enforced as bytes arrive."""
        file_id = new_file_id()
        writer = self.blobs.writer(file_id)  # no I/O: nothing to leak if cancelled here
        committed = False
        try:
            metadata, size = await self._receive(parts, writer)
            if size == 0:
                raise _invalid("FILE_EMPTY", f"File '{metadata.filename}' is empty.", "file")
            await asyncio.to_thread(writer.commit)
            committed = True
            record = self._record(file_id, metadata, size)
            async with self._commit:
                inserted, usage = await asyncio.to_thread(
                    self.store.insert_if_fits, record, self.limits.team_quota_bytes
                )
            if not inserted:
                raise self._over_quota(metadata, size, usage)
        except BaseException:
            # Shielded: a second cancellation must not skip the cleanup.
            await asyncio.shield(
                asyncio.to_thread(_discard, self.blobs, writer, file_id, committed)
            )
            raise
        log.info(
            "file stored",
            extra={"file_id": file_id, "team": record.team, "bytes": size},
        )
        return record

    async def _receive(
        self, parts: AsyncIterator[UploadMetadata | bytes], writer: BlobWriter
    ) -> tuple[UploadMetadata, int]:
        metadata: UploadMetadata | None = None
        metadata_last = False
        usage = 0
        size = 0
        async for part in parts:
            if isinstance(part, UploadMetadata):
                if metadata is not None:
                    raise _invalid("METADATA_REPEATED", "Upload metadata was sent twice.")
                metadata = self._validate(part)
                metadata_last = size > 0
                usage = await asyncio.to_thread(
                    self.store.team_usage, metadata.team, int(self.clock())
                )
                self._check_size(metadata, size, usage)
                continue
            if metadata_last:
                raise _invalid(
                    "METADATA_MISPLACED", "Upload metadata must come first or after all bytes."
                )
            size += len(part)
            self._check_size(metadata, size, usage)
            await asyncio.to_thread(writer.write, part)
        if metadata is None:
            raise _invalid("METADATA_MISSING", "The upload carried no metadata.")
        return metadata, size

    def _validate(self, metadata: UploadMetadata) -> UploadMetadata:
        if not metadata.team:
            raise _invalid("TEAM_MISSING", "The upload names no team.", "team")
        filename = clean_filename(metadata.filename)
        if not filename:
            raise _invalid("FILENAME_MISSING", "The uploaded file needs a file name.", "file")
        _check_purpose(metadata.purpose)
        if metadata.expires_after_s < 0:
            raise _invalid(
                "EXPIRY_INVALID", "'expires_after' must be positive.", "expires_after[seconds]"
            )
        media = metadata.content_type.split(";")[0].strip().lower()
        if not media or media == "application/octet-stream":
            media = mimetypes.guess_type(filename)[0] or media or "application/octet-stream"
        return UploadMetadata(
            team=metadata.team,
            filename=filename,
            purpose=metadata.purpose,
            content_type=media[:255],
            expires_after_s=metadata.expires_after_s,
        )

    def _check_size(self, metadata: UploadMetadata | None, size: int, usage: int) -> None:
        name = f"'{metadata.filename}'" if metadata else "The file"
        if size > self.limits.max_file_bytes:
            raise _invalid(
                "FILE_TOO_LARGE",
                f"File {name} is larger than the limit of {_mb(self.limits.max_file_bytes)} "
                "per file.",
                "file",
            )
        quota = self.limits.team_quota_bytes
        if metadata is not None and quota and usage + size > quota:
            raise self._over_quota(metadata, size, usage)

    def _over_quota(self, metadata: UploadMetadata, size: int, usage: int) -> ServiceError:
        return _invalid(
            "STORAGE_QUOTA_EXCEEDED",
            f"Storing '{metadata.filename}' ({_mb(size)} so far) would exceed the team's "
            f"storage quota of {_mb(self.limits.team_quota_bytes)}; {_mb(usage)} is in use. "
            "Delete files to make room.",
            "file",
        )

    def _record(self, file_id: str, metadata: UploadMetadata, size: int) -> FileRecord:
        now = int(self.clock())
        expiry = metadata.expires_after_s or DEFAULT_EXPIRY_S.get(metadata.purpose, 0)
        return FileRecord(
            id=file_id,
            team=metadata.team,
            filename=metadata.filename,
            purpose=metadata.purpose,
            bytes=size,
            created_at=now,
            content_type=metadata.content_type,
            expires_at=now + expiry if expiry else None,
        )

    # --- read, list, delete ---------------------------------------------------

    async def get(self, team: str, file_id: str) -> FileRecord:
        if not team or not is_file_id(file_id):
            raise not_found(file_id)
        record = await asyncio.to_thread(self.store.get, team, file_id, int(self.clock()))
        if record is None:
            raise not_found(file_id)
        return record

    async def list(
        self, team: str, purpose: str | None, limit: int, after: str | None, ascending: bool
    ) -> tuple[list[FileRecord], bool]:
        if purpose:
            _check_purpose(purpose)
        if not 0 <= limit <= MAX_LIST_LIMIT:
            raise _invalid(
                "LIMIT_INVALID", f"'limit' must be between 1 and {MAX_LIST_LIMIT}.", "limit"
            )
        page = await asyncio.to_thread(
            self.store.page,
            team,
            int(self.clock()),
            purpose=purpose,
            limit=limit or MAX_LIST_LIMIT,
            after=after,
            ascending=ascending,
        )
        if page is None:
            raise _invalid("CURSOR_INVALID", f"'after' names no file of yours: {after}.", "after")
        return page

    async def delete(self, team: str, file_id: str) -> FileRecord:
        if not team or not is_file_id(file_id):
            raise not_found(file_id)
        record = await asyncio.to_thread(self.store.delete, team, file_id, int(self.clock()))
        if record is None:
            raise not_found(file_id)
        # Row first, bytes second: a crash in between leaves unreachable bytes,
        # never a row whose bytes are gone.
        await asyncio.to_thread(self.blobs.delete, file_id)
        log.info("file deleted", extra={"file_id": file_id, "team": team})
        return record

    async def content(
        self, team: str, file_id: str
    ) -> tuple[FileRecord, AsyncGenerator[bytes, None]]:
        """The metadata, and the bytes as an iterator read chunk by chunk."""
        record = await self.get(team, file_id)
        try:
            handle = await asyncio.to_thread(self.blobs.open, file_id)
        except FileNotFoundError:
            log.error("file bytes missing", extra={"file_id": file_id})
            raise ServiceError(
                Kind.INTERNAL, "FILE_BYTES_MISSING", "The file's content is missing."
            ) from None

        async def chunks() -> AsyncGenerator[bytes, None]:
            try:
                while chunk := await asyncio.to_thread(handle.read, READ_CHUNK_BYTES):
                    yield chunk
            finally:
                await asyncio.to_thread(handle.close)

        return record, chunks()

    # --- extraction -----------------------------------------------------------

    async def extract_stored(self, team: str, file_id: str) -> tuple[FileRecord, Extracted]:
        record = await self.get(team, file_id)
        self._check_extract_size(record.filename, record.bytes)
        _, chunks = await self.content(team, file_id)
        try:
            data = b"".join([chunk async for chunk in chunks])
        finally:
            await chunks.aclose()
        return record, await self._extract(record.filename, record.content_type, data)

    async def extract_inline(self, filename: str, content_type: str, data: bytes) -> Extracted:
        name = clean_filename(filename) or "file"
        self._check_extract_size(name, len(data))
        return await self._extract(name, content_type, data)

    def _check_extract_size(self, filename: str, size: int) -> None:
        if size > self.limits.max_extract_bytes:
            raise _invalid(
                "FILE_TOO_LARGE",
                f"File '{filename}' is {_mb(size)}; text is extracted from files up to "
                f"{_mb(self.limits.max_extract_bytes)}.",
                "file",
            )

    async def _extract(self, filename: str, content_type: str, data: bytes) -> Extracted:
        try:
            return await self.extractor.run(filename, content_type, data)
        except ExtractError as error:
            raise _invalid(error.reason, error.message, "file") from None
        except ExtractionTimeout:
            raise ServiceError(
                Kind.DEADLINE_EXCEEDED,
                "EXTRACTION_TIMEOUT",
                f"Reading file '{filename}' took longer than {self.extractor.timeout_s:g} s.",
                "file",
            ) from None
        except WorkerFailed:
            log.error("extraction worker failed", extra={"bytes": len(data)})
            raise ServiceError(
                Kind.INVALID_ARGUMENT,
                "FILE_UNREADABLE",
                f"File '{filename}' could not be read: the reader stopped unexpectedly.",
                "file",
            ) from None

    # --- expiry ---------------------------------------------------------------

    async def purge_expired(self) -> int:
        """Delete every expired file (row, then bytes); how many."""
        purged = 0
        while True:
            expired = await asyncio.to_thread(self.store.expired, int(self.clock()), PURGE_BATCH)
            for record in expired:
                await asyncio.to_thread(self.store.remove, record.id)
                await asyncio.to_thread(self.blobs.delete, record.id)
            purged += len(expired)
            if len(expired) < PURGE_BATCH:
                break
        if purged:
            log.info("expired files purged", extra={"count": purged})
        return purged


def _discard(blobs: BlobStore, writer: BlobWriter, file_id: str, committed: bool) -> None:
    if committed:
        blobs.delete(file_id)
    else:
        writer.abort()
