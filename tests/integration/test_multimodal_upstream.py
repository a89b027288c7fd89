"""Images and audio in chat reach an upstream that takes them, unchanged: the
fake upstream records what the gateway sent. Models without the capability
refuse them; fallbacks skip such models; a remote image URL is never fetched."""

from __future__ import annotations

import base64
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.fake_upstream import PROMPT_TOKENS, FakeUpstream
from tests.stack import Stack

MB = 1024 * 1024
PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(4096)
JPEG = b"\xff\xd8\xff\xe0" + os.urandom(2048)
WAV = b"RIFF\x24\x10\x00\x00WAVEfmt " + os.urandom(4096)
MP3 = b"ID3\x04\x00\x00" + os.urandom(2048)
LOCAL = "smollm2-135m-instruct"


def data_url(data: bytes, media: str) -> str:
    return f"data:{media};base64,{base64.b64encode(data).decode()}"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream("multimodal").start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream) -> Iterator[Stack]:
    data_dir = Path(tmp_path_factory.mktemp("multimodal"))
    config = data_dir / "models.yaml"
    up = f'    upstreams: [{{url: "{upstream.url}"}}]\n'
    config.write_text(
        "models:\n"
        f"  - name: {LOCAL}\n"
        "    backend: local\n"
        "  - name: seer\n"
        "    backend: openai\n"
        "    capabilities: [vision, audio]\n"
        f"{up}"
        "  - name: eyes\n"
        "    backend: openai\n"
        "    capabilities: [vision]\n"
        f"{up}"
        "  - name: blind\n"
        "    backend: openai\n"
        f"{up}"
        "  - name: blind-then-seer\n"
        "    backend: openai\n"
        "    fallbacks: [blind, seer]\n"
        f"{up}"
    )
    # Small limits, so oversize parts are cheap to send; the body limit stays above
    # what parts within them take in base64.
    running = Stack(
        data_dir=data_dir,
        models_config=config,
        edge_overrides={
            "max_body_bytes": 8 * MB,
            "max_file_part_bytes": 1 * MB,
            "max_file_parts_total_bytes": 2 * MB,
        },
    ).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(stack: Stack) -> openai.OpenAI:
    return stack.sdk()


def ask(client: openai.OpenAI, model: str, *parts: dict[str, Any], **extra: Any) -> Any:
    content = [{"type": "text", "text": "What is in this?"}, *parts]
    return client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": content}],  # type: ignore[list-item]
        **extra,
    )


def received(upstream: FakeUpstream) -> list[Any]:
    (message,) = upstream.received[-1]["messages"]
    assert message["role"] == "user"
    content: list[Any] = message["content"]
    return content


def image(url: str, **extra: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url, **extra}}


def audio(data: bytes, audio_format: str) -> dict[str, Any]:
    return {"type": "input_audio", "input_audio": {"data": b64(data), "format": audio_format}}


TEXT = {"type": "text", "text": "What is in this?"}


def test_models_show_their_capabilities(client: openai.OpenAI) -> None:
    listed = {m.id: (m.model_extra or {}).get("capabilities") for m in client.models.list()}
    assert listed["seer"] == ["vision", "audio"] and listed["eyes"] == ["vision"]
    assert listed["blind"] == [] and listed[LOCAL] == []
    one = client.models.retrieve("eyes")
    assert (one.model_extra or {})["capabilities"] == ["vision"]


def test_image_by_url_and_data_url_and_audio_arrive_unchanged(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    parts = [
        image("https://images.example.com/cat.png?size=large", detail="high"),
        image(data_url(PNG, "image/png"), detail="low"),
        image(data_url(JPEG, "image/jpeg")),
        audio(WAV, "wav"),
        audio(MP3, "mp3"),
    ]
    answer = ask(client, "seer", *parts)
    assert received(upstream) == [TEXT, *parts]
    assert answer.model == "seer"
    # Inputs count as the upstream reports them.
    assert answer.usage is not None and answer.usage.prompt_tokens == PROMPT_TOKENS


def test_streaming_sends_the_same_parts(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    parts = [image(data_url(PNG, "image/png")), audio(WAV, "wav")]
    stream = ask(client, "seer", *parts, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello world"
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == PROMPT_TOKENS
    assert received(upstream) == [TEXT, *parts]


def test_an_uploaded_image_file_goes_as_an_image(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    # Named .txt: an image is known by its bytes, not its name.
    uploaded = client.files.create(file=("photo.txt", PNG), purpose="user_data")
    ask(client, "eyes", {"type": "file", "file": {"file_id": uploaded.id}})
    assert received(upstream) == [TEXT, image(data_url(PNG, "image/png"))]
    ask(
        client,
        "eyes",
        {"type": "file", "file": {"filename": "p.jpg", "file_data": data_url(JPEG, "image/jpeg")}},
    )
    assert received(upstream) == [TEXT, image(data_url(JPEG, "image/jpeg"))]


def test_a_remote_image_url_is_passed_on_never_fetched(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/internal/secret.png"
        ask(client, "seer", image(url))
        ask(client, "seer", image(url), stream=True).close()
        assert received(upstream) == [TEXT, image(url)]
        listener.settimeout(0.3)
        with pytest.raises(TimeoutError):
            listener.accept()  # nobody connected


@pytest.mark.parametrize(
    ("model", "part", "what"),
    [
        ("blind", image("https://x.example/a.png"), "images"),
        ("blind", audio(WAV, "wav"), "audio"),
        ("eyes", audio(WAV, "wav"), "audio"),
        (LOCAL, image(data_url(PNG, "image/png")), "images"),
    ],
)
def test_a_model_without_the_capability_refuses_the_part(
    client: openai.OpenAI, upstream: FakeUpstream, model: str, part: dict[str, Any], what: str
) -> None:
    before = len(upstream.received)
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, model, part)
    error = caught.value
    assert error.code == "unsupported_content_type"
    assert error.body["param"] == "messages[0].content[1]"  # type: ignore[index]
    assert f"model '{model}'" in error.message and what in error.message
    assert len(upstream.received) == before


def test_an_image_file_to_a_text_only_model_names_the_file(client: openai.OpenAI) -> None:
    uploaded = client.files.create(file=("cat.png", PNG), purpose="user_data")
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, "blind", {"type": "file", "file": {"file_id": uploaded.id}})
    assert "'cat.png'" in caught.value.message and "model 'blind'" in caught.value.message


def test_fallbacks_skip_models_without_the_capability(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    part = image(data_url(PNG, "image/png"))
    assert ask(client, "blind-then-seer", part).model == "seer"  # configured fallbacks
    assert ask(client, "blind", part, extra_body={"models": ["eyes"]}).model == "eyes"
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, "blind", audio(WAV, "wav"), extra_body={"models": ["eyes"]})
    assert "nor does any fallback" in caught.value.message
    # A text-only request still goes to the model asked for.
    plain = client.chat.completions.create(
        model="blind-then-seer", messages=[{"role": "user", "content": "hi"}]
    )
    assert plain.model == "blind-then-seer"


@pytest.mark.parametrize(
    ("parts", "param", "limit"),
    [
        (
            [image(data_url(PNG + bytes(MB), "image/png"))],
            "messages[0].content[1].image_url.url",
            "1 MB",
        ),
        ([audio(WAV + bytes(MB), "wav")], "messages[0].content[1].input_audio.data", "1 MB"),
        (
            [image(data_url(PNG + bytes(MB - 8192), "image/png"))] * 3,
            "messages[0].content[3].image_url.url",
            "2 MB",
        ),
    ],
)
def test_oversize_parts_name_part_size_and_limit(
    client: openai.OpenAI, parts: list[dict[str, Any]], param: str, limit: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, "seer", *parts)
    error = caught.value
    assert error.body["param"] == param  # type: ignore[index]
    assert limit in error.message and "bytes)" in error.message


@pytest.mark.parametrize(
    ("part", "param"),
    [
        (image("data:image/png;base64,!!notbase64!!"), "messages[0].content[1].image_url.url"),
        (image("data:image/bmp;base64,AAAA"), "messages[0].content[1].image_url.url"),
        (image("data:image/png,rawbytes"), "messages[0].content[1].image_url.url"),
        (image("gopher://x/a.png"), "messages[0].content[1].image_url.url"),
        (image(data_url(b"plain text", "image/png")), "messages[0].content[1].image_url.url"),
        (audio(WAV, "ogg"), "messages[0].content[1].input_audio.format"),
        (audio(MP3, "wav"), "messages[0].content[1].input_audio.data"),
    ],
)
def test_bad_parts_are_400_with_param(
    client: openai.OpenAI, part: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, "seer", part)
    assert caught.value.body["param"] == param  # type: ignore[index]
