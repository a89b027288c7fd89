"""BatchesService: protobuf <-> BatchBook, nothing more."""

from __future__ import annotations

from typing import Any

import grpc
from aqueduct.files.v1 import files_pb2 as pb
from aqueduct.files.v1 import files_pb2_grpc

from core.enum_names import BATCH_STATUSES
from services.files.batch_records import BatchError, BatchRecord, LineResult
from services.files.batches import BatchBook

Context = grpc.aio.ServicerContext[Any, Any]


def batch_message(record: BatchRecord) -> pb.Batch:
    return pb.Batch(
        id=record.id,
        team=record.team,
        key_id=record.key_id,
        endpoint=record.endpoint,
        input_file_id=record.input_file_id,
        completion_window=record.completion_window,
        status=BATCH_STATUSES.by_name[record.status],
        output_file_id=record.output_file_id,
        error_file_id=record.error_file_id,
        errors=[
            pb.BatchError(code=e.code, message=e.message, param=e.param, line=e.line)
            for e in record.errors
        ],
        total=record.total,
        completed=record.completed,
        failed=record.failed,
        metadata=record.metadata,
        created_at=record.created_at,
        expires_at=record.expires_at,
        in_progress_at=record.in_progress_at,
        finalizing_at=record.finalizing_at,
        completed_at=record.completed_at,
        failed_at=record.failed_at,
        expired_at=record.expired_at,
        cancelling_at=record.cancelling_at,
        cancelled_at=record.cancelled_at,
        model=record.model,
        usage=pb.BatchUsage(input_tokens=record.input_tokens, output_tokens=record.output_tokens),
    )


class BatchesServicer(files_pb2_grpc.BatchesServiceServicer):
    def __init__(self, book: BatchBook) -> None:
        self.book = book

    async def CreateBatch(
        self, request: pb.CreateBatchRequest, context: Context
    ) -> pb.CreateBatchResponse:
        record = await self.book.create(
            request.team,
            request.key_id,
            request.input_file_id,
            request.endpoint,
            request.completion_window,
            dict(request.metadata),
        )
        return pb.CreateBatchResponse(batch=batch_message(record))

    async def GetBatch(self, request: pb.GetBatchRequest, context: Context) -> pb.GetBatchResponse:
        return pb.GetBatchResponse(
            batch=batch_message(await self.book.get(request.team, request.batch_id))
        )

    async def ListBatches(
        self, request: pb.ListBatchesRequest, context: Context
    ) -> pb.ListBatchesResponse:
        records, has_more = await self.book.page(request.team, request.limit, request.after)
        return pb.ListBatchesResponse(
            batches=[batch_message(r) for r in records], has_more=has_more
        )

    async def CancelBatch(
        self, request: pb.CancelBatchRequest, context: Context
    ) -> pb.CancelBatchResponse:
        record = await self.book.cancel(request.team, request.batch_id)
        return pb.CancelBatchResponse(batch=batch_message(record))

    async def ClaimBatch(
        self, request: pb.ClaimBatchRequest, context: Context
    ) -> pb.ClaimBatchResponse:
        record = await self.book.claim(request.worker_id, request.lease_seconds)
        if record is None:
            return pb.ClaimBatchResponse()
        return pb.ClaimBatchResponse(batch=batch_message(record))

    async def RenewBatchLease(
        self, request: pb.RenewBatchLeaseRequest, context: Context
    ) -> pb.RenewBatchLeaseResponse:
        record = await self.book.renew(request.batch_id, request.worker_id, request.lease_seconds)
        return pb.RenewBatchLeaseResponse(batch=batch_message(record))

    async def StartBatch(
        self, request: pb.StartBatchRequest, context: Context
    ) -> pb.StartBatchResponse:
        record, done, interrupted = await self.book.start(
            request.batch_id, request.worker_id, request.total, request.model
        )
        return pb.StartBatchResponse(
            batch=batch_message(record), done_lines=done, interrupted_lines=interrupted
        )

    async def RecordBatchLines(
        self, request: pb.RecordBatchLinesRequest, context: Context
    ) -> pb.RecordBatchLinesResponse:
        record = await self.book.record(
            request.batch_id,
            request.worker_id,
            [
                LineResult(r.index, r.custom_id, r.ok, r.line, r.input_tokens, r.output_tokens)
                for r in request.results
            ],
            list(request.started),
        )
        return pb.RecordBatchLinesResponse(batch=batch_message(record))

    async def FinishBatch(
        self, request: pb.FinishBatchRequest, context: Context
    ) -> pb.FinishBatchResponse:
        record = await self.book.finish(
            request.batch_id,
            request.worker_id,
            BATCH_STATUSES.get(request.status, ""),
            [BatchError(e.code, e.message, e.param, e.line) for e in request.errors],
        )
        return pb.FinishBatchResponse(batch=batch_message(record))
