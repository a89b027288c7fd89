"""An upstream whose answer is not HTTP, before or after its headers: the
request fails as UPSTREAM_BAD_RESPONSE (the edge's 502), not as unreachable."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from services.common.errors import ServiceError
from services.inference.generation import ChatRequest, Message
from services.inference.models_file import ModelSpec, UpstreamSpec
from services.inference.openai_backend import OpenAIBackend, UpstreamOptions

HEADERS = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)


async def first_failure(reply: bytes) -> ServiceError:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(reply)
        await reader.read()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    spec = ModelSpec(
        name="m",
        backend="openai",
        timeout_s=5,
        upstreams=(UpstreamSpec(f"http://127.0.0.1:{port}/v1", None, None),),
    )
    backend = OpenAIBackend(spec, UpstreamOptions())
    try:
        with pytest.raises(ServiceError) as caught:
            async for _ in backend.stream_chat(ChatRequest("m", (Message("user", "hi"),))):
                pass
        return caught.value
    finally:
        await backend.close()
        server.close()


@pytest.mark.parametrize(
    "reply",
    [b"SPEAKING SMTP HERE\r\n\r\n", HEADERS + b"zz-not-a-chunk-size\r\n"],
    ids=["status-line", "chunk-framing"],
)
def test_an_answer_that_is_not_http_is_a_bad_response(reply: bytes) -> None:
    error = uvloop.run(asyncio.wait_for(first_failure(reply), 10))
    assert error.reason == "UPSTREAM_BAD_RESPONSE"
    assert "malformed HTTP response" in str(error)
