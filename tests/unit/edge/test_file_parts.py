"""File parts in chat: parsed as placeholders (pure), then resolved with limits
against a stand-in files service."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import grpc
import pytest
from aqueduct.files.v1 import files_pb2 as pb

from edge.chat_request import FilePart, parse_chat_request
from edge.errors import ApiError
from edge.file_parts import FilePartResolver, render_text

MB = 1024 * 1024


def chat(*content: Any, role: str = "user") -> Any:
    return parse_chat_request(
        {"model": "m", "messages": [{"role": role, "content": list(content)}]}
    )


def data_url(data: bytes, media: str = "text/plain") -> str:
    return f"data:{media};base64,{base64.b64encode(data).decode()}"


def test_file_parts_stay_placeholders_in_order() -> None:
    call = chat(
        {"type": "text", "text": "Summarise:"},
        {"type": "file", "file": {"file_id": "file-abc"}},
        {"type": "file", "file": {"filename": "n.txt", "file_data": data_url(b"hi")}},
    )
    assert call.request.messages[0].content == ""
    (pending,) = call.pending
    assert pending.message_index == 0 and pending.message.role == "user"
    text, by_id, inline = pending.segments
    assert text == "Summarise:"
    assert by_id == FilePart(param="messages[0].content[1]", file_id="file-abc")
    assert inline == FilePart(
        param="messages[0].content[2]",
        filename="n.txt",
        media_type="text/plain",
        base64_data=base64.b64encode(b"hi").decode(),
    )


def test_messages_without_file_parts_are_not_pending() -> None:
    call = chat({"type": "text", "text": "a"}, {"type": "text", "text": "b"})
    assert call.pending == ()
    assert call.request.messages[0].content == "a\nb"


@pytest.mark.parametrize(
    ("part", "param"),
    [
        ({"type": "file"}, "messages[0].content[0].file"),
        ({"type": "file", "file": {}}, "messages[0].content[0].file"),
        (
            {"type": "file", "file": {"file_id": "f", "file_data": "data:;base64,"}},
            "messages[0].content[0].file",
        ),
        ({"type": "file", "file": {"file_id": 7}}, "messages[0].content[0].file.file_id"),
        (
            {"type": "file", "file": {"file_data": "aGVsbG8="}},
            "messages[0].content[0].file.file_data",
        ),
        (
            {"type": "file", "file": {"file_data": "data:text/plain,hi"}},
            "messages[0].content[0].file.file_data",
        ),
        (
            {"type": "file", "file": {"file_id": "f", "filename": 3}},
            "messages[0].content[0].file.filename",
        ),
    ],
)
def test_malformed_file_parts_name_the_field(part: dict[str, Any], param: str) -> None:
    with pytest.raises(ApiError) as caught:
        chat(part)
    assert (caught.value.status, caught.value.param) == (400, param)


def test_file_parts_belong_in_user_messages() -> None:
    with pytest.raises(ApiError) as caught:
        chat({"type": "file", "file": {"file_id": "f"}}, role="system")
    assert caught.value.param == "messages[0].content[0].type"


class FakeFiles:
    """Answers like the files service for a few known files of team 't'."""

    def __init__(self, sizes: dict[str, int]) -> None:
        self.sizes = sizes
        self.extracted: list[pb.ExtractFileContentRequest] = []

    async def GetFile(self, request: pb.GetFileRequest, **_: Any) -> pb.GetFileResponse:
        if request.team != "t" or request.file_id not in self.sizes:
            raise _rpc_error(grpc.StatusCode.NOT_FOUND, f"No such File object: {request.file_id}")
        size = self.sizes[request.file_id]
        return pb.GetFileResponse(
            file=pb.File(id=request.file_id, filename=f"{request.file_id}.txt", bytes=size)
        )

    async def ExtractFileContent(
        self, request: pb.ExtractFileContentRequest, **_: Any
    ) -> pb.ExtractFileContentResponse:
        self.extracted.append(request)
        if request.WhichOneof("source") == "inline":
            if request.inline.content_type.startswith("image/"):
                return pb.ExtractFileContentResponse(image_data_url="data:image/png;base64,AA==")
            return pb.ExtractFileContentResponse(text=request.inline.data.decode())
        return pb.ExtractFileContentResponse(text=f"text of {request.file_id}")


def _rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


def resolve(files: FakeFiles, call: Any, part_mb: int = 10, total_mb: int = 32) -> None:
    resolver = FilePartResolver(files, part_mb * MB, total_mb * MB)  # type: ignore[arg-type]
    asyncio.run(resolver.resolve(call.pending, call.request.model, "t", "rid"))


def test_parts_become_text_that_names_each_file() -> None:
    files = FakeFiles({"file-a": 10})
    call = chat(
        {"type": "text", "text": "Compare:"},
        {"type": "file", "file": {"file_id": "file-a"}},
        {"type": "file", "file": {"filename": "b.md", "file_data": data_url(b"# B")}},
    )
    resolve(files, call)
    assert call.request.messages[0].content == "\n".join(
        ["Compare:", render_text("file-a.txt", "text of file-a"), render_text("b.md", "# B")]
    )
    assert render_text("b.md", "# B") == '<file name="b.md">\n# B\n</file>'


def test_one_part_over_its_limit_names_file_size_and_limit() -> None:
    files = FakeFiles({"file-big": 10 * MB + 1})
    call = chat({"type": "file", "file": {"file_id": "file-big"}})
    with pytest.raises(ApiError) as caught:
        resolve(files, call)
    error = caught.value
    assert (error.status, error.code, error.param) == (
        400,
        "file_too_large",
        "messages[0].content[0].file",
    )
    assert "'file-big.txt'" in error.message and "10485761 bytes" in error.message
    assert "10 MB" in error.message
    assert files.extracted == []  # limits are checked before anything is read


def test_inline_part_size_is_the_decoded_size() -> None:
    call = chat(
        {"type": "file", "file": {"filename": "x.txt", "file_data": data_url(b"x" * (MB + 1))}}
    )
    with pytest.raises(ApiError) as caught:
        resolve(FakeFiles({}), call, part_mb=1)
    assert f"{MB + 1} bytes" in caught.value.message and "'x.txt'" in caught.value.message
    exactly = chat(
        {"type": "file", "file": {"filename": "x.txt", "file_data": data_url(b"x" * MB)}}
    )
    resolve(FakeFiles({}), exactly, part_mb=1)


def test_all_parts_together_over_the_total_limit() -> None:
    files = FakeFiles({f"file-{i}": 9 * MB for i in range(4)})
    call = chat(*({"type": "file", "file": {"file_id": f"file-{i}"}} for i in range(4)))
    with pytest.raises(ApiError) as caught:
        resolve(files, call)
    error = caught.value
    assert (error.status, error.code, error.param) == (
        400,
        "file_parts_too_large",
        "messages[0].content[3].file",
    )
    assert "'file-3.txt'" in error.message and "32 MB" in error.message
    assert f"{36 * MB} bytes" in error.message


def test_unknown_or_foreign_file_id_is_404_on_the_part() -> None:
    call = chat({"type": "text", "text": "x"}, {"type": "file", "file": {"file_id": "file-theirs"}})
    with pytest.raises(ApiError) as caught:
        resolve(FakeFiles({}), call)
    assert (caught.value.status, caught.value.param) == (404, "messages[0].content[1].file.file_id")


def test_image_files_become_image_parts_with_their_bytes() -> None:
    """Whether the model takes images is inference's call; the edge sends the
    image as bytes, beside the message's other parts, in order."""
    call = chat(
        {"type": "text", "text": "What is this?"},
        {
            "type": "file",
            "file": {"filename": "cat.png", "file_data": data_url(b"\x89PNG", "image/png")},
        },
    )
    resolve(FakeFiles({}), call)
    message = call.request.messages[0]
    assert message.content == ""
    text, image = message.parts
    assert text.text == "What is this?"
    assert (image.image.data, image.image.media_type, image.image.filename) == (
        b"\x00",  # what the files service answered: data:image/png;base64,AA==
        "image/png",
        "cat.png",
    )


def test_invalid_base64_is_400_on_file_data() -> None:
    call = chat(
        {"type": "file", "file": {"filename": "x", "file_data": "data:text/plain;base64,@@@@"}}
    )
    with pytest.raises(ApiError) as caught:
        resolve(FakeFiles({}), call)
    assert caught.value.param == "messages[0].content[0].file.file_data"
