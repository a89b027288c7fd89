"""Turn the `file` parts of a chat request into text the model reads.

Called once per chat request, between parsing and inference. Limits come first
(every part's decoded size, then all parts together), before any file is read;
then every part is extracted by the files service (stored files by id, scoped to
the key's team; inline files as bytes) and its message's content becomes the
text parts and the files' text, in order, each file under a header that names
it. Images become image_url parts, which no model behind this gateway accepts
yet (inference messages carry text only), so they are refused with a 400 rather
than dropped.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
from aqueduct.files.v1 import files_pb2 as pb

from core import tracing
from edge.chat_request import FilePart, PendingContent
from edge.errors import ApiError, from_rpc_error, invalid
from edge.path_ids import SAFE_ID, not_found

if TYPE_CHECKING:
    from aqueduct.files.v1.files_pb2_grpc import FilesServiceAsyncStub

MB = 1024 * 1024
GET_TIMEOUT_S = 5.0
EXTRACT_TIMEOUT_S = 60.0
DECODE_IN_THREAD_BYTES = 256 * 1024


@dataclass(frozen=True)
class _Sized:
    part: FilePart
    filename: str
    size: int


@dataclass(frozen=True)
class ImageUrlPart:
    """An image file part as the model would get it: an image_url data URL."""

    url: str
    filename: str


def render_text(filename: str, text: str) -> str:
    """A file's text as the model sees it: fenced by tags that name the file."""
    name = filename.replace('"', "'")
    return f'<file name="{name}">\n{text}\n</file>'


def _size_text(size: int) -> str:
    return f"{size / MB:.1f} MB ({size} bytes)"


def _decoded_size(payload: str) -> int:
    """Decoded length of base64 text, without decoding it."""
    stripped = payload.strip()
    return len(stripped) * 3 // 4 - stripped[-2:].count("=")


class FilePartResolver:
    def __init__(
        self, files: FilesServiceAsyncStub, max_part_bytes: int, max_total_bytes: int
    ) -> None:
        self.files = files
        self.max_part_bytes = max_part_bytes
        self.max_total_bytes = max_total_bytes

    async def resolve(
        self, pending: Sequence[PendingContent], model: str, team: str, request_id: str
    ) -> None:
        """Fill in the content of every message that has file parts."""
        if not pending:
            return
        metadata = tracing.call_metadata(request_id)
        parts = [s for p in pending for s in p.segments if isinstance(s, FilePart)]
        sized = await asyncio.gather(*(self._size(part, team, metadata) for part in parts))
        self._check_limits(sized)
        contents = await asyncio.gather(*(self._extract(s, team, metadata) for s in sized))
        resolved = {id(s.part): content for s, content in zip(sized, contents, strict=True)}
        for content_of in pending:
            texts = []
            for segment in content_of.segments:
                if isinstance(segment, str):
                    texts.append(segment)
                    continue
                content = resolved[id(segment)]
                if isinstance(content, ImageUrlPart):
                    raise _image_refused(segment, content.filename, model)
                texts.append(content)
            content_of.message.content = "\n".join(texts)

    async def _size(
        self, part: FilePart, team: str, metadata: tuple[tuple[str, str], ...]
    ) -> _Sized:
        if part.file_id is None:
            return _Sized(part, part.filename or "file", _decoded_size(part.base64_data))
        if not SAFE_ID.fullmatch(part.file_id):  # no such file; and not sent to be echoed back
            raise not_found("file", part.file_id, f"{part.param}.file.file_id")
        try:
            answer = await self.files.GetFile(
                pb.GetFileRequest(team=team, file_id=part.file_id),
                timeout=GET_TIMEOUT_S,
                metadata=metadata,
            )
        except grpc.aio.AioRpcError as error:
            raise _for_part(error, f"{part.param}.file.file_id") from None
        return _Sized(part, part.filename or answer.file.filename, answer.file.bytes)

    def _check_limits(self, sized: list[_Sized]) -> None:
        total = 0
        for item in sized:
            if item.size > self.max_part_bytes:
                raise invalid(
                    f"{item.part.param}.file",
                    f"File '{item.filename}' in {item.part.param} is {_size_text(item.size)}; "
                    f"the limit for one file part is {self.max_part_bytes // MB} MB.",
                    "file_too_large",
                )
            total += item.size
            if total > self.max_total_bytes:
                raise invalid(
                    f"{item.part.param}.file",
                    f"File parts add up to {_size_text(total)} with file '{item.filename}' "
                    f"in {item.part.param}; the limit for all file parts of one request is "
                    f"{self.max_total_bytes // MB} MB.",
                    "file_parts_too_large",
                )

    async def _extract(
        self, item: _Sized, team: str, metadata: tuple[tuple[str, str], ...]
    ) -> str | ImageUrlPart:
        part = item.part
        if part.file_id is not None:
            request = pb.ExtractFileContentRequest(team=team, file_id=part.file_id)
            param = f"{part.param}.file.file_id"
        else:
            data = await _decode(part, item.size)
            request = pb.ExtractFileContentRequest(
                team=team,
                inline=pb.InlineFile(
                    filename=item.filename, content_type=part.media_type, data=data
                ),
            )
            param = f"{part.param}.file.file_data"
        try:
            answer = await self.files.ExtractFileContent(
                request, timeout=EXTRACT_TIMEOUT_S, metadata=metadata
            )
        except grpc.aio.AioRpcError as error:
            raise _for_part(error, param) from None
        if answer.HasField("image_data_url"):
            return ImageUrlPart(answer.image_data_url, item.filename)
        return render_text(item.filename, answer.text)


async def _decode(part: FilePart, size: int) -> bytes:
    payload = part.base64_data.strip()
    try:
        if size > DECODE_IN_THREAD_BYTES:
            return await asyncio.to_thread(base64.b64decode, payload, validate=True)
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise invalid(
            f"{part.param}.file.file_data",
            f"'{part.param}.file.file_data' is not valid base64.",
        ) from None


def _for_part(error: grpc.aio.AioRpcError, param: str) -> ApiError:
    """The files service's verdict, pointing at the part of the chat request."""
    mapped = from_rpc_error(error, "files")
    if mapped.status in (400, 404):
        mapped.param = param
    return mapped


def _image_refused(part: FilePart, filename: str, model: str) -> ApiError:
    return invalid(
        f"{part.param}.file",
        f"File '{filename}' in {part.param} is an image; it would reach the model as an "
        f"image_url part, but model '{model}' reads text only.",
        "unsupported_content_type",
    )
