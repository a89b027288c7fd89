"""image_url and input_audio parts in chat: checked when parsed (pure), decoded
and limited with file parts when resolved."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest
from aqueduct.inference.v1 import inference_pb2 as pb

from core.estimates import estimate_input_tokens
from edge.chat_request import AudioSegment, ImageSegment, parse_chat_request
from edge.config import Settings
from edge.errors import ApiError
from edge.file_parts import FilePartResolver

MB = 1024 * 1024
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
WAV = b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(64)
MP3 = b"ID3\x04\x00" + bytes(64)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def chat(*content: Any, role: str = "user") -> Any:
    return parse_chat_request(
        {"model": "m", "messages": [{"role": role, "content": list(content)}]}
    )


def image(url: str, **extra: Any) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url, **extra}}


def audio(data: str, audio_format: str = "wav") -> dict[str, Any]:
    return {"type": "input_audio", "input_audio": {"data": data, "format": audio_format}}


def resolve(call: Any, part_mb: int = 10, total_mb: int = 32) -> None:
    resolver = FilePartResolver(None, part_mb * MB, total_mb * MB)  # type: ignore[arg-type]
    asyncio.run(resolver.resolve(call.pending, call.request.model, "t", "rid"))


def test_parts_are_kept_in_order_as_placeholders() -> None:
    call = chat(
        {"type": "text", "text": "Look"},
        image("https://example.com/a.png", detail="low"),
        image(f"data:image/png;base64,{b64(PNG)}"),
        audio(b64(WAV)),
    )
    (pending,) = call.pending
    _, remote, inline, sound = pending.segments
    assert remote == ImageSegment(
        "messages[0].content[1]", url="https://example.com/a.png", detail="low"
    )
    assert inline == ImageSegment(
        "messages[0].content[2]", media_type="image/png", base64_data=b64(PNG)
    )
    assert sound == AudioSegment("messages[0].content[3]", b64(WAV), "wav")


def test_resolved_parts_carry_bytes_and_urls_as_given() -> None:
    call = chat(
        {"type": "text", "text": "Look"},
        image("http://127.0.0.1:9/never-fetched.png", detail="high"),
        image(f"data:image/png;base64,{b64(PNG)}"),
        audio(b64(MP3), "mp3"),
    )
    resolve(call)
    message = call.request.messages[0]
    assert message.content == ""
    text, remote, inline, sound = message.parts
    assert text == pb.ContentPart(text="Look")
    assert remote.image == pb.ImagePart(url="http://127.0.0.1:9/never-fetched.png", detail="high")
    assert inline.image == pb.ImagePart(data=PNG, media_type="image/png")
    assert sound.audio == pb.AudioPart(data=MP3, format="mp3")


@pytest.mark.parametrize(
    ("part", "param"),
    [
        ({"type": "image_url"}, "messages[0].content[0].image_url"),
        (image(""), "messages[0].content[0].image_url.url"),
        (image("ftp://example.com/a.png"), "messages[0].content[0].image_url.url"),
        (image("file:///etc/passwd"), "messages[0].content[0].image_url.url"),
        (image("https://"), "messages[0].content[0].image_url.url"),
        (image("https://x:99999/a.png"), "messages[0].content[0].image_url.url"),
        (image("https://x/" + "a" * 9000), "messages[0].content[0].image_url.url"),
        (image("data:image/png,notbase64"), "messages[0].content[0].image_url.url"),
        (image("data:image/png;base64"), "messages[0].content[0].image_url.url"),
        (image("data:image/tiff;base64,AAAA"), "messages[0].content[0].image_url.url"),
        (image("data:text/html;base64,AAAA"), "messages[0].content[0].image_url.url"),
        (image("https://x/a.png", detail="ultra"), "messages[0].content[0].image_url.detail"),
        ({"type": "input_audio"}, "messages[0].content[0].input_audio"),
        (audio(""), "messages[0].content[0].input_audio.data"),
        (audio(b64(WAV), "flac"), "messages[0].content[0].input_audio.format"),
    ],
)
def test_malformed_parts_name_the_field(part: dict[str, Any], param: str) -> None:
    with pytest.raises(ApiError) as caught:
        chat(part)
    assert (caught.value.status, caught.value.param) == (400, param)


def test_media_parts_belong_in_user_messages() -> None:
    with pytest.raises(ApiError) as caught:
        chat(image("https://x/a.png"), role="assistant")
    assert caught.value.param == "messages[0].content[0].type"


@pytest.mark.parametrize(
    ("part", "param", "code"),
    [
        (image("data:image/png;base64,@@@@"), "messages[0].content[0].image_url.url", None),
        (
            image(f"data:image/png;base64,{b64(b'not an image at all')}"),
            "messages[0].content[0].image_url.url",
            "unsupported_media_type",
        ),
        (audio("@@@@"), "messages[0].content[0].input_audio.data", None),
        (
            audio(b64(MP3), "wav"),
            "messages[0].content[0].input_audio.data",
            "unsupported_media_type",
        ),
        (
            audio(b64(WAV), "mp3"),
            "messages[0].content[0].input_audio.data",
            "unsupported_media_type",
        ),
    ],
)
def test_bad_data_is_400_on_the_part(part: dict[str, Any], param: str, code: str | None) -> None:
    call = chat(part)
    with pytest.raises(ApiError) as caught:
        resolve(call)
    assert (caught.value.status, caught.value.param) == (400, param)
    if code:
        assert caught.value.code == code


def test_size_limits_count_images_and_audio_with_files() -> None:
    big = PNG + bytes(MB)
    with pytest.raises(ApiError) as caught:
        resolve(chat(image(f"data:image/png;base64,{b64(big)}")), part_mb=1)
    error = caught.value
    assert (error.code, error.param) == ("file_too_large", "messages[0].content[0].image_url.url")
    assert f"{len(big)} bytes" in error.message and "1 MB" in error.message
    half = WAV + bytes(MB // 2 + 1)
    with pytest.raises(ApiError) as caught:
        resolve(
            chat(
                audio(b64(half)),
                {
                    "type": "file",
                    "file": {
                        "filename": "n.txt",
                        "file_data": "data:text/plain;base64," + b64(bytes(MB // 2)),
                    },
                },
            ),
            total_mb=1,
        )
    assert (caught.value.code, caught.value.param) == (
        "file_parts_too_large",
        "messages[0].content[1].file",
    )
    assert "1 MB" in caught.value.message


def test_remote_urls_do_not_count_toward_the_size_limits() -> None:
    call = chat(*(image(f"https://x/{i}.png") for i in range(40)))
    resolve(call, part_mb=1, total_mb=1)
    assert len(call.request.messages[0].parts) == 40


def test_the_reserve_counts_images_and_audio() -> None:
    call = chat(
        image("https://x/a.png"),
        image("https://x/b.png", detail="low"),
        audio(b64(WAV + bytes(32000 - len(WAV)))),
    )
    resolve(call)
    text_only = estimate_input_tokens(
        pb.StreamChatCompletionRequest(messages=[pb.ChatMessage(role="user", content="")])
    )
    assert estimate_input_tokens(call.request) == text_only + 765 + 85 + 10


def test_by_default_the_body_limit_is_above_the_part_limits_in_base64() -> None:
    """A request within the part limits must not meet the body limit first:
    32 MB of parts are ~42.7 MB of base64, plus the JSON around them."""
    settings = Settings.from_env()
    in_base64 = -(-settings.max_file_parts_total_bytes // 3) * 4
    assert settings.max_body_bytes >= in_base64 + MB
