"""The Files API: /v1/files upload, list, retrieve, content, delete.

Uploads stream: the multipart body is parsed as it arrives (python-multipart's
push parser) and the file's bytes go to the files service over a
client-streaming call in chunks of at most 1 MiB, so memory stays flat however
large the file. The JSON body limit (AQUEDUCT_MAX_BODY_MB) does not apply here;
the files service enforces the per-file limit and the team quota. Every call is
scoped to the key's team: another team's file answers 404.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from typing import TYPE_CHECKING, Any

import grpc
from aqueduct.auth.v1 import auth_pb2
from aqueduct.files.v1 import files_pb2 as pb
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from core.enum_names import FILE_PURPOSES
from edge.auth import Authenticator
from edge.errors import ApiError, from_rpc_error, invalid
from edge.http import json_response, list_response, page_limit, request_id, until_disconnect
from edge.path_ids import generated_id

if TYPE_CHECKING:
    from aqueduct.files.v1.files_pb2_grpc import FilesServiceAsyncStub

log = logging.getLogger(__name__)

EXPIRY_RANGE_S = (3600, 30 * 24 * 3600)  # OpenAI's bounds for expires_after[seconds]
SEND_CHUNK_BYTES = 1024 * 1024
MAX_FIELD_BYTES = 1024
# Text fields an upload may carry (OpenAI's are three): more is a field bomb,
# refused before it is kept. Each part's headers are bounded by python-multipart.
MAX_FORM_FIELDS = 16
# After the files service refuses an upload, the rest of the body is read and
# dropped (up to this much), so the client gets the answer rather than a reset.
DRAIN_LIMIT_BYTES = 1024 * 1024 * 1024
CALL_TIMEOUT_S = 10.0

UploadCall = grpc.aio.StreamUnaryCall[pb.UploadFileRequest, pb.UploadFileResponse]
DownloadCall = grpc.aio.UnaryStreamCall[
    pb.DownloadFileContentRequest, pb.DownloadFileContentResponse
]


def team_of(principal: auth_pb2.Principal) -> str:
    """Whose files a key sees: its team (a key without one is a team of one)."""
    return principal.team or f"key:{principal.key_id}"


def file_json(file: pb.File) -> dict[str, Any]:
    # OpenAI's schema has no null `expires_at` or `status_details` (deprecated):
    # a file that never expires has no `expires_at`.
    answer: dict[str, Any] = {
        "id": file.id,
        "object": "file",
        "bytes": file.bytes,
        "created_at": file.created_at,
        "filename": file.filename,
        "purpose": FILE_PURPOSES.get(file.purpose, "user_data"),
        "status": "processed",
    }
    if file.expires_at:
        answer["expires_at"] = file.expires_at
    return answer


def _purpose(value: str) -> pb.FilePurpose.ValueType:
    if value not in FILE_PURPOSES.by_name:
        raise invalid(
            "purpose",
            f"'purpose' must be one of {', '.join(FILE_PURPOSES.names)}; got '{value[:64]}'.",
        )
    return FILE_PURPOSES.by_name[value]


def _rpc_error(error: grpc.aio.AioRpcError) -> ApiError:
    mapped = from_rpc_error(error, "files")
    if mapped.code == "file_too_large":
        mapped.status = 413
    return mapped


class FilesApi:
    def __init__(self, authenticator: Authenticator, files: FilesServiceAsyncStub) -> None:
        self.authenticator = authenticator
        self.files = files

    async def _team(self, request: Request) -> tuple[str, tuple[tuple[str, str], ...]]:
        rid = request_id(request)
        principal = await self.authenticator.authenticate(request.headers, rid)
        return team_of(principal), (("x-request-id", rid),)

    async def create(self, request: Request) -> Response:
        team, metadata = await self._team(request)
        upload = MultipartUpload(request, team)
        call = self.files.UploadFile(metadata=metadata)
        try:
            answer = await upload.run(call)
        finally:
            if not call.done():
                call.cancel()
        return json_response(file_json(answer.file), headers={"x-request-id": request_id(request)})

    async def list(self, request: Request) -> Response:
        team, metadata = await self._team(request)
        query = request.query_params
        listing = pb.ListFilesRequest(team=team, after=query.get("after", ""))
        if query.get("purpose"):
            listing.purpose = _purpose(query["purpose"])
        limit = page_limit(query.get("limit"), 10_000)
        if limit is not None:
            listing.limit = limit
        order = query.get("order", "desc")
        if order not in ("asc", "desc"):
            raise invalid("order", f"'order' must be 'asc' or 'desc'; got '{order[:16]}'.")
        listing.order = pb.SORT_ORDER_ASC if order == "asc" else pb.SORT_ORDER_DESC
        try:
            page = await self.files.ListFiles(listing, timeout=CALL_TIMEOUT_S, metadata=metadata)
        except grpc.aio.AioRpcError as error:
            raise _rpc_error(error) from None
        return list_response([file_json(f) for f in page.files], page.has_more, request_id(request))

    async def retrieve(self, request: Request) -> Response:
        team, metadata = await self._team(request)
        file_id = generated_id(request, "file_id", "file", "file_id")
        try:
            answer = await self.files.GetFile(
                pb.GetFileRequest(team=team, file_id=file_id),
                timeout=CALL_TIMEOUT_S,
                metadata=metadata,
            )
        except grpc.aio.AioRpcError as error:
            raise _rpc_error(error) from None
        return json_response(file_json(answer.file), headers={"x-request-id": request_id(request)})

    async def delete(self, request: Request) -> Response:
        team, metadata = await self._team(request)
        file_id = generated_id(request, "file_id", "file", "file_id")
        try:
            answer = await self.files.DeleteFile(
                pb.DeleteFileRequest(team=team, file_id=file_id),
                timeout=CALL_TIMEOUT_S,
                metadata=metadata,
            )
        except grpc.aio.AioRpcError as error:
            raise _rpc_error(error) from None
        return json_response(
            {"id": answer.file_id, "object": "file", "deleted": True},
            headers={"x-request-id": request_id(request)},
        )

    async def content(self, request: Request) -> Response:
        team, metadata = await self._team(request)
        file_id = generated_id(request, "file_id", "file", "file_id")
        call: DownloadCall = self.files.DownloadFileContent(
            pb.DownloadFileContentRequest(team=team, file_id=file_id), metadata=metadata
        )
        # The first message is the metadata: errors (404) come before any byte.
        try:
            first = await call.read()
        except grpc.aio.AioRpcError as error:
            raise _rpc_error(error) from None
        if not isinstance(first, pb.DownloadFileContentResponse) or not first.HasField("file"):
            call.cancel()
            raise ApiError(502, "The files service sent no metadata.", type="server_error")
        return FileDownload(call, first.file, request_id(request))


class FileDownload(Response):
    """A file's bytes as they come from the files service, one write per chunk.

    If the client goes away the gRPC call is cancelled at once; if the files
    service fails mid-way the connection is closed short of Content-Length, so
    the client sees an incomplete body rather than a silently truncated file.
    """

    def __init__(self, call: DownloadCall, file: pb.File, rid: str) -> None:
        quoted = urllib.parse.quote(file.filename, safe="")
        ascii_name = file.filename.encode("ascii", "replace").decode().replace('"', "'")
        super().__init__(
            headers={
                "content-type": file.content_type or "application/octet-stream",
                "content-length": str(file.bytes),
                "content-disposition": (
                    f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quoted}"
                ),
                "x-request-id": rid,
            }
        )
        self.call = call

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        try:
            await until_disconnect(receive, self._pump(send))
        except ApiError:
            pass  # the client left
        finally:
            self.call.cancel()

    async def _pump(self, send: Send) -> None:
        try:
            while isinstance(message := await self.call.read(), pb.DownloadFileContentResponse):
                await send({"type": "http.response.body", "body": message.chunk, "more_body": True})
        except grpc.aio.AioRpcError as error:
            log.warning("download failed mid-way", extra={"code": error.code().name})
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class MultipartUpload:
    """Parses a multipart/form-data body as it arrives and feeds an UploadFile call.

    Text fields (`purpose`, `expires_after[anchor]`, `expires_after[seconds]`)
    that precede the file part travel as the first message; if `purpose` only
    comes after the file, the metadata is sent after the bytes instead.
    """

    def __init__(self, request: Request, team: str) -> None:
        self.request = request
        self.team = team
        self.fields: dict[str, bytes] = {}
        self.file_name: str | None = None
        self.file_type = ""
        self.file_parts = 0
        self.field_parts = 0
        self.pending = bytearray()
        self.file_done = False
        self.ended = False
        self.metadata_sent = False
        self._headers: list[tuple[bytes, bytes]] = []
        self._field: bytearray | None = None
        self._name = ""
        self._in_file = False
        self._header_name = bytearray()
        self._header_value = bytearray()
        self.parser = MultipartParser(
            _boundary(request),
            {
                "on_part_begin": self._part_begin,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value_data,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
                "on_end": self._end,
            },
        )

    async def run(self, call: UploadCall) -> pb.UploadFileResponse:
        received = 0
        stream = self.request.stream()
        try:
            async for chunk in stream:
                received += len(chunk)
                self._feed(chunk)
                await self._flush(call, final=False)
            self._finish()
            await self._flush(call, final=True)
            await call.done_writing()
            return await call
        except ClientDisconnect:
            raise ApiError(499, "Client closed the request.", type="cancelled") from None
        except _Refused:
            error = await _failure(call)
        except grpc.aio.AioRpcError as rpc_error:
            error = _rpc_error(rpc_error)
        except ApiError as api_error:
            error = api_error
        call.cancel()
        # Read the rest of the body, so the client gets the answer, not a reset.
        try:
            async for chunk in stream:
                received += len(chunk)
                if received > DRAIN_LIMIT_BYTES:
                    break
        except ClientDisconnect:
            pass
        raise error

    def _feed(self, chunk: bytes) -> None:
        try:
            self.parser.write(chunk)
        except FormParserError as error:
            raise invalid(None, f"The multipart body is malformed: {error}.") from None

    def _finish(self) -> None:
        try:
            self.parser.finalize()
        except FormParserError as error:
            raise invalid(None, f"The multipart body is malformed: {error}.") from None
        if not self.ended:
            raise invalid(None, "The multipart body ended before its closing boundary.")
        if self.file_parts == 0:
            raise invalid(
                "file",
                "'file' is required: a multipart part with a filename.",
                "missing_required_parameter",
            )
        if "purpose" not in self.fields:
            raise invalid("purpose", "'purpose' is required.", "missing_required_parameter")

    async def _flush(self, call: UploadCall, final: bool) -> None:
        """Send what the parser produced: the metadata as soon as it is known
        (before the bytes, or after all of them if `purpose` followed the file),
        and the bytes in chunks of SEND_CHUNK_BYTES."""
        messages: list[pb.UploadFileRequest] = []
        send_metadata = (
            self.file_parts > 0 and not self.metadata_sent and ("purpose" in self.fields or final)
        )
        if send_metadata and not self.file_done:
            messages.append(pb.UploadFileRequest(metadata=self._metadata()))
        flush_all = final or self.file_done
        while len(self.pending) >= SEND_CHUNK_BYTES or (flush_all and self.pending):
            messages.append(pb.UploadFileRequest(chunk=bytes(self.pending[:SEND_CHUNK_BYTES])))
            del self.pending[:SEND_CHUNK_BYTES]
        if send_metadata and self.file_done:
            messages.append(pb.UploadFileRequest(metadata=self._metadata()))
        self.metadata_sent = self.metadata_sent or send_metadata
        for message in messages:
            try:
                await call.write(message)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                raise _Refused from None

    def _metadata(self) -> pb.UploadFileMetadata:
        purpose = _purpose(self._text("purpose"))
        if purpose == pb.FILE_PURPOSE_BATCH_OUTPUT:  # only batches write these
            raise invalid("purpose", "Files with purpose 'batch_output' are written by batches.")
        metadata = pb.UploadFileMetadata(
            team=self.team,
            filename=self.file_name or "",
            purpose=purpose,
            content_type=self.file_type,
        )
        anchor = self.fields.get("expires_after[anchor]")
        seconds = self.fields.get("expires_after[seconds]")
        if anchor is not None or seconds is not None:
            if self._text("expires_after[anchor]") != "created_at":
                raise invalid(
                    "expires_after[anchor]", "'expires_after[anchor]' must be 'created_at'."
                )
            raw = self._text("expires_after[seconds]")
            low, high = EXPIRY_RANGE_S
            if not raw.isdigit() or not low <= int(raw) <= high:
                raise invalid(
                    "expires_after[seconds]",
                    f"'expires_after[seconds]' must be an integer from {low} to {high}.",
                )
            metadata.expires_after_seconds = int(raw)
        return metadata

    def _text(self, name: str) -> str:
        return self.fields.get(name, b"").decode("utf-8", "replace").strip()

    # --- parser callbacks (synchronous, called from parser.write) ------------

    def _part_begin(self) -> None:
        self._headers = []
        self._header_name.clear()
        self._header_value.clear()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers.append((bytes(self._header_name).lower(), bytes(self._header_value)))
        self._header_name.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        headers = dict(self._headers)
        _, options = parse_options_header(
            headers.get(b"content-disposition", b"").decode("latin-1")
        )
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        self._in_file = self._name == "file" and filename is not None
        self._field = None
        if self._in_file:
            self.file_parts += 1
            if self.file_parts > 1:
                raise invalid("file", "Send exactly one 'file' part.")
            self.file_name = (filename or b"").decode("utf-8", "replace")
            self.file_type = headers.get(b"content-type", b"").decode("latin-1").strip()
            return
        self.field_parts += 1
        if self.field_parts > MAX_FORM_FIELDS:
            raise invalid(
                self._name or None,
                f"The multipart body has more than {MAX_FORM_FIELDS} fields besides 'file'.",
                "too_many_fields",
            )
        if self._name:
            if self.metadata_sent:
                raise invalid(self._name, f"Send the '{self._name}' field before the 'file' part.")
            self._field = bytearray()

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self.pending += data[start:end]
        elif self._field is not None:
            self._field += data[start:end]
            if len(self._field) > MAX_FIELD_BYTES:
                raise invalid(self._name, f"The '{self._name}' field is too long.")

    def _end(self) -> None:
        self.ended = True

    def _part_end(self) -> None:
        if self._field is not None:
            self.fields[self._name] = bytes(self._field)
            self._field = None
        if self._in_file:
            self.file_done = True
        self._in_file = False


class _Refused(Exception):
    """The files service ended the upload early; its status says why."""


async def _failure(call: UploadCall) -> ApiError:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return _rpc_error(error)
    return ApiError(502, "The files service ended the upload early.", type="server_error")


def _boundary(request: Request) -> bytes:
    media, options = parse_options_header(request.headers.get("content-type", ""))
    if media != b"multipart/form-data":
        raise ApiError(
            415,
            "Content-Type must be multipart/form-data with a 'file' and a 'purpose' part.",
            code="unsupported_media_type",
        )
    boundary = options.get(b"boundary")
    if not boundary:
        raise invalid(None, "The multipart Content-Type has no boundary.")
    return boundary
