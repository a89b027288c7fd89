"""FilesService: protobuf <-> FileLibrary, nothing more."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
from aqueduct.files.v1 import files_pb2 as pb
from aqueduct.files.v1 import files_pb2_grpc

from core.enum_names import FILE_PURPOSES
from core.errors import Kind, ServiceError
from services.common.key_scope import scoped_team
from services.files.kept_responses import ResponseKeeper
from services.files.library import FileLibrary
from services.files.records import FileRecord, KeptResponse, UploadMetadata

Context = grpc.aio.ServicerContext[Any, Any]


def file_message(record: FileRecord) -> pb.File:
    return pb.File(
        id=record.id,
        team=record.team,
        filename=record.filename,
        purpose=FILE_PURPOSES.by_name[record.purpose],
        bytes=record.bytes,
        created_at=record.created_at,
        expires_at=record.expires_at or 0,
        content_type=record.content_type,
    )


async def _upload_parts(
    requests: AsyncIterator[pb.UploadFileRequest],
) -> AsyncIterator[UploadMetadata | bytes]:
    async for request in requests:
        which = request.WhichOneof("part")
        if which == "chunk":
            yield request.chunk
        elif which == "metadata":
            meta = request.metadata
            yield UploadMetadata(
                team=scoped_team(meta.team),
                filename=meta.filename,
                purpose=FILE_PURPOSES.get(meta.purpose, ""),
                content_type=meta.content_type,
                expires_after_s=meta.expires_after_seconds,
            )


class FilesServicer(files_pb2_grpc.FilesServiceServicer):
    def __init__(self, library: FileLibrary, responses: ResponseKeeper) -> None:
        self.library = library
        self.responses = responses

    async def UploadFile(
        self, request_iterator: AsyncIterator[pb.UploadFileRequest], context: Context
    ) -> pb.UploadFileResponse:
        record = await self.library.upload(_upload_parts(request_iterator))
        return pb.UploadFileResponse(file=file_message(record))

    async def GetFile(self, request: pb.GetFileRequest, context: Context) -> pb.GetFileResponse:
        record = await self.library.get(scoped_team(request.team), request.file_id)
        return pb.GetFileResponse(file=file_message(record))

    async def ListFiles(
        self, request: pb.ListFilesRequest, context: Context
    ) -> pb.ListFilesResponse:
        records, has_more = await self.library.list(
            scoped_team(request.team),
            FILE_PURPOSES.get(request.purpose),
            request.limit,
            request.after or None,
            ascending=request.order == pb.SORT_ORDER_ASC,
        )
        return pb.ListFilesResponse(files=[file_message(r) for r in records], has_more=has_more)

    async def DeleteFile(
        self, request: pb.DeleteFileRequest, context: Context
    ) -> pb.DeleteFileResponse:
        record = await self.library.delete(scoped_team(request.team), request.file_id)
        return pb.DeleteFileResponse(file_id=record.id)

    async def DownloadFileContent(  # type: ignore[override]  # writes, does not yield
        self, request: pb.DownloadFileContentRequest, context: Context
    ) -> None:
        record, chunks = await self.library.content(scoped_team(request.team), request.file_id)
        # Closed at once, also when the caller goes away (the call is cancelled here).
        async with contextlib.aclosing(chunks):
            await context.write(pb.DownloadFileContentResponse(file=file_message(record)))
            async for chunk in chunks:
                await context.write(pb.DownloadFileContentResponse(chunk=chunk))

    async def ExtractFileContent(
        self, request: pb.ExtractFileContentRequest, context: Context
    ) -> pb.ExtractFileContentResponse:
        which = request.WhichOneof("source")
        if which == "file_id":
            record, extracted = await self.library.extract_stored(
                scoped_team(request.team), request.file_id
            )
            filename, size = record.filename, record.bytes
        elif which == "inline":
            inline = request.inline
            extracted = await self.library.extract_inline(
                inline.filename, inline.content_type, inline.data
            )
            filename, size = inline.filename, len(inline.data)
        else:
            raise ServiceError(
                Kind.INVALID_ARGUMENT,
                "SOURCE_MISSING",
                "Give a file_id or an inline file.",
                "source",
            )
        response = pb.ExtractFileContentResponse(filename=filename, bytes=size)
        if extracted.image_data_url is not None:
            response.image_data_url = extracted.image_data_url
        else:
            response.text = extracted.text or ""
        return response

    async def PutStoredResponse(
        self, request: pb.PutStoredResponseRequest, context: Context
    ) -> pb.PutStoredResponseResponse:
        kept = request.response
        expires_at = await self.responses.put(
            KeptResponse(
                id=kept.id,
                team=scoped_team(kept.team),
                created_at=kept.created_at,
                expires_at=kept.expires_at,
                response_json=kept.response_json,
                input_items_json=kept.input_items_json,
                conversation_json=kept.conversation_json,
            )
        )
        return pb.PutStoredResponseResponse(expires_at=expires_at)

    async def GetStoredResponse(
        self, request: pb.GetStoredResponseRequest, context: Context
    ) -> pb.GetStoredResponseResponse:
        record = await self.responses.get(scoped_team(request.team), request.response_id)
        return pb.GetStoredResponseResponse(
            response=pb.StoredResponse(
                id=record.id,
                team=record.team,
                created_at=record.created_at,
                expires_at=record.expires_at,
                response_json=record.response_json,
                input_items_json=record.input_items_json,
                conversation_json=record.conversation_json,
            )
        )

    async def DeleteStoredResponse(
        self, request: pb.DeleteStoredResponseRequest, context: Context
    ) -> pb.DeleteStoredResponseResponse:
        await self.responses.delete(scoped_team(request.team), request.response_id)
        return pb.DeleteStoredResponseResponse(response_id=request.response_id)
