"""An upstream whose answer is not HTTP, before or after its headers: the
request fails as UPSTREAM_BAD_RESPONSE (the edge's 502), not as unreachable. A
replica whose connect hangs: the request goes to another one, and with none
left it fails as UPSTREAM_TIMEOUT after the model's connect timeout."""

from __future__ import annotations

import asyncio
import time

import pytest
import uvloop

from core.errors import Kind, ServiceError
from services.inference.generation import ChatRequest, Message
from services.inference.models_file import ModelSpec, UpstreamSpec
from services.inference.openai_backend import OpenAIBackend, UpstreamOptions
from tests.processes import hanging_port

HEADERS = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)
EVENTS = (
    b'data: {"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":"stop"}]}\n\n'
    b"data: [DONE]\n\n"
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


def backend(*urls: str) -> OpenAIBackend:
    spec = ModelSpec(
        name="m",
        backend="openai",
        timeout_s=5,
        connect_timeout_s=0.2,
        upstreams=tuple(UpstreamSpec(url, None, None) for url in urls),
    )
    return OpenAIBackend(spec, UpstreamOptions())


async def chat_text(model: OpenAIBackend) -> str:
    text = ""
    async for event in model.stream_chat(ChatRequest("m", (Message("user", "hi"),))):
        if isinstance(event, list):
            text += "".join(delta.text for delta in event)
    return text


def test_a_replica_whose_connect_hangs_is_passed_over_for_another() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(EVENTS), EVENTS)
        )
        await writer.drain()
        writer.close()

    async def scenario(port: int) -> None:
        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        good = server.sockets[0].getsockname()[1]
        model = backend(f"http://127.0.0.1:{good}/v1", f"http://127.0.0.1:{port}/v1")
        try:
            for _ in range(2):  # ties take turns: the hanging replica goes first at least once
                assert await chat_text(model) == "hi"
            assert model.balancer.replicas[1].failures >= 1  # it was tried, and timed out
        finally:
            await model.close()
            server.close()

    with hanging_port() as port:
        uvloop.run(asyncio.wait_for(scenario(port), 10))


def test_with_only_hanging_replicas_the_error_is_a_connect_timeout() -> None:
    async def scenario(port: int) -> ServiceError:
        model = backend(f"http://127.0.0.1:{port}/v1")
        try:
            with pytest.raises(ServiceError) as caught:
                await chat_text(model)
            return caught.value
        finally:
            await model.close()

    with hanging_port() as port:
        started = time.monotonic()
        error = uvloop.run(asyncio.wait_for(scenario(port), 10))
        assert 0.15 <= time.monotonic() - started < 2
    assert error.reason == "UPSTREAM_TIMEOUT"
    assert error.kind == Kind.DEADLINE_EXCEEDED
    assert "Could not connect to an upstream of model 'm' within 0.2 s" in str(error)
