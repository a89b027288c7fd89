"""The batch service's domain logic: create, read, cancel, and the worker's lease.

No grpc here. A batch's output and error files are written here, from the
line results the worker recorded, through the FileLibrary like any upload, so
they count toward the team's storage and are read through the Files API.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable

from core.errors import Kind, ServiceError
from services.files.batch_records import (
    ACTIVE,
    COMPLETION_WINDOWS,
    ENDPOINTS,
    FINISHED_AT,
    BatchError,
    BatchRecord,
    LineResult,
    is_batch_id,
    new_batch_id,
)
from services.files.batch_store import BatchStore, errors_json
from services.files.library import FileLibrary
from services.files.records import UploadMetadata

log = logging.getLogger(__name__)
MAX_LIST_LIMIT = 100
DEFAULT_LIST_LIMIT = 20
OUTPUT_CHUNK_BYTES = 1024 * 1024


def _invalid(reason: str, message: str, param: str) -> ServiceError:
    return ServiceError(Kind.INVALID_ARGUMENT, reason, message, param)


def not_found(batch_id: str) -> ServiceError:
    return ServiceError(
        Kind.NOT_FOUND, "BATCH_NOT_FOUND", f"No such Batch object: {batch_id}", "batch_id"
    )


def lease_lost(batch_id: str) -> ServiceError:
    return ServiceError(
        Kind.FAILED_PRECONDITION,
        "LEASE_LOST",
        f"This worker no longer holds the lease of {batch_id}.",
        "batch_id",
    )


class BatchBook:
    def __init__(
        self, store: BatchStore, files: FileLibrary, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.files = files
        self.clock = clock

    # --- client calls ----------------------------------------------------------

    async def create(
        self,
        team: str,
        key_id: str,
        input_file_id: str,
        endpoint: str,
        completion_window: str,
        metadata: dict[str, str],
    ) -> BatchRecord:
        if endpoint not in ENDPOINTS:
            raise _invalid(
                "ENDPOINT_INVALID",
                f"'endpoint' must be one of {', '.join(ENDPOINTS)}; got '{endpoint[:64]}'.",
                "endpoint",
            )
        if completion_window not in COMPLETION_WINDOWS:
            raise _invalid(
                "COMPLETION_WINDOW_INVALID",
                f"'completion_window' must be 24h; got '{completion_window[:16]}'.",
                "completion_window",
            )
        file = await self.files.get(team, input_file_id)  # NOT_FOUND for another team's
        if file.purpose != "batch":
            raise _invalid(
                "INPUT_FILE_PURPOSE",
                f"File {input_file_id} has purpose '{file.purpose}'; a batch's input "
                "file must have purpose 'batch'.",
                "input_file_id",
            )
        now = int(self.clock())
        record = BatchRecord(
            id=new_batch_id(),
            team=team,
            key_id=key_id,
            endpoint=endpoint,
            input_file_id=input_file_id,
            completion_window=completion_window,
            status="validating",
            created_at=now,
            expires_at=now + COMPLETION_WINDOWS[completion_window],
            metadata=metadata,
        )
        await asyncio.to_thread(self.store.insert, record)
        log.info("batch created", extra={"batch_id": record.id, "team": team})
        return record

    async def get(self, team: str, batch_id: str) -> BatchRecord:
        record = (
            await asyncio.to_thread(self.store.get, batch_id, team)
            if is_batch_id(batch_id)
            else None
        )
        if record is None:
            raise not_found(batch_id)
        return record

    async def page(
        self, team: str, limit: int, after: str | None
    ) -> tuple[list[BatchRecord], bool]:
        if limit < 0 or limit > MAX_LIST_LIMIT:
            raise _invalid(
                "LIMIT_INVALID", f"'limit' must be 1 to {MAX_LIST_LIMIT}; got {limit}.", "limit"
            )
        return await asyncio.to_thread(
            self.store.page, team, limit or DEFAULT_LIST_LIMIT, after or None
        )

    async def cancel(self, team: str, batch_id: str) -> BatchRecord:
        record = await self.get(team, batch_id)
        if record.status in ("cancelling", "cancelled"):
            return record
        changed = await asyncio.to_thread(
            self.store.set_fields,
            batch_id,
            ("validating", "in_progress"),
            status="cancelling",
            cancelling_at=int(self.clock()),
        )
        if changed is None:
            raise ServiceError(
                Kind.FAILED_PRECONDITION,
                "BATCH_NOT_CANCELLABLE",
                f"Batch {batch_id} is {record.status} and cannot be cancelled.",
                "batch_id",
            )
        return changed

    # --- worker calls ----------------------------------------------------------

    async def claim(self, worker_id: str, lease_s: float) -> BatchRecord | None:
        return await asyncio.to_thread(self.store.claim, worker_id, self.clock(), lease_s)

    async def renew(self, batch_id: str, worker_id: str, lease_s: float) -> BatchRecord:
        if not await asyncio.to_thread(
            self.store.renew, batch_id, worker_id, self.clock(), lease_s
        ):
            raise lease_lost(batch_id)
        record = await asyncio.to_thread(self.store.get, batch_id)
        if record is None:
            raise not_found(batch_id)
        return record

    async def start(
        self, batch_id: str, worker_id: str, total: int, model: str = ""
    ) -> tuple[BatchRecord, list[int], list[int]]:
        """The batch in progress, its recorded lines, and its lines started but
        never recorded (interrupted: they may have run)."""
        await self._check_lease(batch_id, worker_id)
        record = await asyncio.to_thread(
            self.store.set_fields,
            batch_id,
            ("validating",),
            status="in_progress",
            in_progress_at=int(self.clock()),
            total=total,
            model=model[:200],
        )
        if record is None:  # resumed, or cancelled meanwhile: as it stands
            record = await asyncio.to_thread(
                self.store.set_fields, batch_id, ACTIVE, total=total, model=model[:200]
            ) or await self.get_any(batch_id)
        done, interrupted = await asyncio.to_thread(self.store.done_lines, batch_id)
        return record, done, interrupted

    async def record(
        self,
        batch_id: str,
        worker_id: str,
        results: list[LineResult],
        started: list[int] | None = None,
    ) -> BatchRecord:
        await self._check_lease(batch_id, worker_id)
        record = await asyncio.to_thread(self.store.record_lines, batch_id, results, started or [])
        if record is None:
            raise not_found(batch_id)
        return record

    async def finish(
        self, batch_id: str, worker_id: str, status: str, errors: list[BatchError]
    ) -> BatchRecord:
        """End the batch; the output and error files hold every recorded line
        (none for a batch that failed validation: it recorded none)."""
        if status not in FINISHED_AT:
            raise _invalid("STATUS_INVALID", f"A batch cannot be finished as '{status}'.", "status")
        record = await self.get_any(batch_id)
        if record.status not in ACTIVE:
            return record  # finished before (a retried call)
        await self._check_lease(batch_id, worker_id)
        now = int(self.clock())
        if status == "completed":
            finalizing = await asyncio.to_thread(
                self.store.set_fields,
                batch_id,
                ("in_progress",),
                status="finalizing",
                finalizing_at=now,
            )
            # A cancel accepted after the worker's last record (its last lines
            # ran): the batch ends cancelled, as its owner was told. Once
            # finalizing, a cancel is refused instead, so one of the two wins.
            if finalizing is None and (await self.get_any(batch_id)).status == "cancelling":
                status = "cancelled"
        try:
            output = await self._write(record, ok=True)
            error = await self._write(record, ok=False)
        except ServiceError as refused:  # e.g. over the team's storage quota
            if refused.kind is not Kind.INVALID_ARGUMENT:
                raise
            failed = BatchError(
                refused.reason.lower(), f"The results were not stored: {refused.message}"
            )
            done = await asyncio.to_thread(
                self.store.set_fields,
                batch_id,
                ACTIVE,
                status="failed",
                failed_at=int(self.clock()),
                errors=errors_json([failed]),
                lease_owner="",
                lease_until=0.0,
            )
            await asyncio.to_thread(self.store.drop_lines, batch_id)
            return done or await self.get_any(batch_id)
        done = await asyncio.to_thread(
            self.store.set_fields,
            batch_id,
            ACTIVE,
            status=status,
            errors=errors_json(errors),
            output_file_id=output,
            error_file_id=error,
            lease_owner="",
            lease_until=0.0,
            **{FINISHED_AT[status]: int(self.clock())},
        )
        if done is not None:  # the files hold the results now
            await asyncio.to_thread(self.store.drop_lines, batch_id)
        log.info("batch finished", extra={"batch_id": batch_id, "status": status})
        return done or await self.get_any(batch_id)

    async def _check_lease(self, batch_id: str, worker_id: str) -> None:
        if await asyncio.to_thread(self.store.lease_owner, batch_id) != worker_id:
            raise lease_lost(batch_id)

    async def get_any(self, batch_id: str) -> BatchRecord:
        record = await asyncio.to_thread(self.store.get, batch_id)
        if record is None:
            raise not_found(batch_id)
        return record

    async def _write(self, batch: BatchRecord, ok: bool) -> str:
        """One file of the recorded lines of a kind; "" when there are none."""
        lines = await asyncio.to_thread(lambda: list(self.store.lines(batch.id, ok)))
        if not lines:
            return ""
        name = "output" if ok else "errors"

        async def parts() -> AsyncIterator[UploadMetadata | bytes]:
            yield UploadMetadata(
                team=batch.team,
                filename=f"{batch.id}_{name}.jsonl",
                purpose="batch_output",
                content_type="application/jsonl",
            )
            chunk: list[bytes] = []
            size = 0
            for line in lines:
                chunk.append(line + b"\n")
                size += len(line) + 1
                if size >= OUTPUT_CHUNK_BYTES:
                    yield b"".join(chunk)
                    chunk, size = [], 0
            if chunk:
                yield b"".join(chunk)

        return (await self.files.upload(parts())).id
