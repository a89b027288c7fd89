"""Content parts from the gRPC contract into the inference domain."""

from __future__ import annotations

import pytest
from aqueduct.inference.v1 import inference_pb2 as pb

from core.errors import Kind, ServiceError
from services.inference.convert import chat_request
from services.inference.generation import AudioInput, ImageInput


def request(*parts: pb.ContentPart) -> pb.StreamChatCompletionRequest:
    return pb.StreamChatCompletionRequest(
        model="m",
        messages=[
            pb.ChatMessage(role="system", content="Be brief."),
            pb.ChatMessage(role="user", parts=list(parts)),
        ],
    )


def test_parts_keep_order_bytes_and_text() -> None:
    chat = chat_request(
        request(
            pb.ContentPart(text="a"),
            pb.ContentPart(image=pb.ImagePart(url="https://x/a.png", detail="low")),
            pb.ContentPart(text="b"),
            pb.ContentPart(image=pb.ImagePart(data=b"\x89PNG", media_type="image/png")),
            pb.ContentPart(audio=pb.AudioPart(data=b"RIFF", format="wav")),
        )
    )
    system, user = chat.messages
    assert system.parts == () and system.content == "Be brief."
    assert user.content == "a\nb"  # the text, for backends that read text only
    assert user.parts == (
        "a",
        ImageInput(url="https://x/a.png", detail="low"),
        "b",
        ImageInput(data=b"\x89PNG", media_type="image/png"),
        AudioInput(b"RIFF", "wav"),
    )
    assert [n.param for n in chat.media_needs] == [
        "messages[1].content[1]",
        "messages[1].content[4]",
    ]


@pytest.mark.parametrize(
    "part",
    [
        pb.ContentPart(image=pb.ImagePart()),
        pb.ContentPart(image=pb.ImagePart(data=b"x")),
        pb.ContentPart(image=pb.ImagePart(data=b"x", media_type="text/plain")),
        pb.ContentPart(audio=pb.AudioPart(format="wav")),
        pb.ContentPart(audio=pb.AudioPart(data=b"x")),
    ],
)
def test_incomplete_parts_are_invalid_arguments_naming_the_part(part: pb.ContentPart) -> None:
    with pytest.raises(ServiceError) as caught:
        chat_request(request(pb.ContentPart(text="x"), part))
    assert (caught.value.kind, caught.value.param) == (
        Kind.INVALID_ARGUMENT,
        "messages[1].content[1]",
    )
