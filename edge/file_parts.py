"""Turn the file, image and audio parts of a chat request into what inference takes.

Called once per chat request, between parsing and inference. Limits come first
(every inline part's decoded size, then all of them together), before any file
is read; then every file part is extracted by the files service (stored files
by id, scoped to the key's team; inline files as bytes), and every data URL and
audio part is decoded. A message whose parts are all text after that gets them
joined into its content, each file under a header that names it; a message with
an image (an image_url part, or a file part whose bytes are an image) or audio
keeps its parts, images and audio as bytes. Whether the model takes them is
inference's call (the models file's `capabilities`), not the edge's.
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
from aqueduct.inference.v1 import inference_pb2 as inference_pb

from core import tracing
from core.media import image_type
from edge.chat_request import AudioSegment, FilePart, ImageSegment, PendingContent, Segment
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
    part: FilePart | ImageSegment | AudioSegment
    filename: str
    size: int  # decoded bytes; 0 for a remote image URL (not fetched, not counted)


Resolved = str | inference_pb.ImagePart | inference_pb.AudioPart


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
        """Fill in the content (or parts) of every message with non-text parts."""
        if not pending:
            return
        metadata = tracing.call_metadata(request_id)
        parts = [s for p in pending for s in p.segments if not isinstance(s, str)]
        sized = await asyncio.gather(*(self._size(part, team, metadata) for part in parts))
        self._check_limits(sized)
        contents = await asyncio.gather(*(self._content(s, team, metadata) for s in sized))
        resolved = {id(s.part): content for s, content in zip(sized, contents, strict=True)}
        for content_of in pending:
            items = [_text_or(resolved, segment) for segment in content_of.segments]
            texts = [item for item in items if isinstance(item, str)]
            if len(texts) == len(items):
                content_of.message.content = "\n".join(texts)
                continue
            content_of.message.parts.extend(_content_part(item) for item in items)

    async def _size(
        self,
        part: FilePart | ImageSegment | AudioSegment,
        team: str,
        metadata: tuple[tuple[str, str], ...],
    ) -> _Sized:
        if isinstance(part, ImageSegment):
            return _Sized(part, "image", _decoded_size(part.base64_data))
        if isinstance(part, AudioSegment):
            return _Sized(part, "audio", _decoded_size(part.base64_data))
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
        """One limit per inline part, one for all of a request's inline parts
        (file, image and audio data alike)."""
        total = 0
        for item in sized:
            param, what = _described(item)
            if item.size > self.max_part_bytes:
                raise invalid(
                    param,
                    f"{what} in {item.part.param} is {_size_text(item.size)}; "
                    f"the limit for one file, image or audio part is "
                    f"{self.max_part_bytes // MB} MB.",
                    "file_too_large",
                )
            total += item.size
            if total > self.max_total_bytes:
                raise invalid(
                    param,
                    f"File, image and audio parts add up to {_size_text(total)} with "
                    f"{what[0].lower()}{what[1:]} in {item.part.param}; the limit for all of "
                    f"them in one request is {self.max_total_bytes // MB} MB.",
                    "file_parts_too_large",
                )

    async def _content(
        self, item: _Sized, team: str, metadata: tuple[tuple[str, str], ...]
    ) -> Resolved:
        part = item.part
        if isinstance(part, ImageSegment):
            return await _image(part, item.size)
        if isinstance(part, AudioSegment):
            data = await _decode(part.base64_data, item.size, f"{part.param}.input_audio.data")
            _check_audio(part, data)
            return inference_pb.AudioPart(data=data, format=part.format)
        if part.file_id is not None:
            request = pb.ExtractFileContentRequest(team=team, file_id=part.file_id)
            param = f"{part.param}.file.file_id"
        else:
            data = await _decode(part.base64_data, item.size, f"{part.param}.file.file_data")
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
            # The files service found an image by its bytes: it goes on as one.
            media, _, payload = answer.image_data_url.removeprefix("data:").partition(";base64,")
            data = await _decode(payload, len(payload) * 3 // 4, param)
            return inference_pb.ImagePart(data=data, media_type=media, filename=item.filename)
        return render_text(item.filename, answer.text)


async def _image(part: ImageSegment, size: int) -> inference_pb.ImagePart:
    if part.url:  # passed on as given: never fetched here
        return inference_pb.ImagePart(url=part.url, detail=part.detail)
    param = part.url_param or f"{part.param}.image_url.url"
    data = await _decode(part.base64_data, size, param)
    if image_type(data) is None:
        raise invalid(
            param,
            f"The data URL in '{param}' is not a PNG, JPEG, WebP or GIF image.",
            "unsupported_media_type",
        )
    return inference_pb.ImagePart(data=data, media_type=part.media_type, detail=part.detail)


def _check_audio(part: AudioSegment, data: bytes) -> None:
    """The bytes must be what `format` says (a WAV or an MP3 header)."""
    if part.format == "wav":
        ok = data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    else:  # mp3: an ID3 tag, or an MPEG audio frame sync
        ok = data[:3] == b"ID3" or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0)
    if not ok:
        raise invalid(
            f"{part.param}.input_audio.data",
            f"'{part.param}.input_audio.data' is not {part.format.upper()} audio.",
            "unsupported_media_type",
        )


def _described(item: _Sized) -> tuple[str, str]:
    """(param, how a message names it) for a part's size errors."""
    part = item.part
    if isinstance(part, ImageSegment):
        return f"{part.param}.image_url.url", "The image"
    if isinstance(part, AudioSegment):
        return f"{part.param}.input_audio.data", "The audio"
    return f"{part.param}.file", f"File '{item.filename}'"


def _text_or(resolved: dict[int, Resolved], segment: Segment) -> Resolved:
    return segment if isinstance(segment, str) else resolved[id(segment)]


def _content_part(item: Resolved) -> inference_pb.ContentPart:
    if isinstance(item, str):
        return inference_pb.ContentPart(text=item)
    if isinstance(item, inference_pb.ImagePart):
        return inference_pb.ContentPart(image=item)
    return inference_pb.ContentPart(audio=item)


async def _decode(payload: str, size: int, param: str) -> bytes:
    payload = payload.strip()
    try:
        if size > DECODE_IN_THREAD_BYTES:
            return await asyncio.to_thread(base64.b64decode, payload, validate=True)
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise invalid(param, f"'{param}' is not valid base64.") from None


def _for_part(error: grpc.aio.AioRpcError, param: str) -> ApiError:
    """The files service's verdict, pointing at the part of the chat request."""
    mapped = from_rpc_error(error, "files")
    if mapped.status in (400, 404):
        mapped.param = param
    return mapped
