"""The shared server interceptors, on a real grpc.aio server: domain errors
become statuses with ErrorInfo, anything else INTERNAL without its details, and
every log line written for a call carries the caller's request id."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import grpc
import orjson
import pytest
from aqueduct.inference.v1 import inference_pb2 as pb

from core.errors import Kind, ServiceError
from core.logs import JsonFormatter
from core.request_id import REQUEST_ID
from core.status import error_info
from services.common.grpc_server import ServiceHost

probe_log = logging.getLogger("tests.probe")


def missing() -> ServiceError:
    return ServiceError(Kind.NOT_FOUND, "THING_MISSING", "No such thing.", param="id")


async def refuse(request: bytes, context: Any) -> bytes:
    raise missing()


async def write_then_refuse(request: bytes, context: Any) -> None:
    await context.write(b"first")
    raise missing()


async def crash(request: bytes, context: Any) -> bytes:
    raise RuntimeError("a secret detail")


async def echo_id(request: Any, context: Any) -> bytes:
    probe_log.warning("handled")
    return REQUEST_ID.get().encode()


HANDLERS = {
    "Refuse": grpc.unary_unary_rpc_method_handler(refuse),
    "WriteThenRefuse": grpc.unary_stream_rpc_method_handler(write_then_refuse),
    "Crash": grpc.unary_unary_rpc_method_handler(crash),
    "EchoId": grpc.unary_unary_rpc_method_handler(echo_id),
    "EchoMessageId": grpc.unary_unary_rpc_method_handler(
        echo_id, request_deserializer=pb.CreateEmbeddingsRequest.FromString
    ),
}


class Lines(logging.Handler):
    """Formats each record as the services do, at the moment it is logged."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter("probe"))
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(orjson.loads(self.format(record)))


@pytest.fixture
def lines() -> Iterator[Lines]:
    handler = Lines()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


def on_server(test: Callable[[grpc.aio.Channel], Awaitable[None]]) -> None:
    async def run() -> None:
        host = ServiceHost("127.0.0.1:0", [])
        host.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("test.Probe", HANDLERS),)
        )
        port = await host.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                await test(channel)
        finally:
            await host.stop(0)

    asyncio.run(run())


def test_a_service_error_ends_the_call_with_its_status_and_error_info() -> None:
    async def test(channel: grpc.aio.Channel) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await channel.unary_unary("/test.Probe/Refuse")(b"", timeout=10)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert caught.value.details() == "No such thing."
        info = error_info(caught.value)
        assert info is not None
        assert (info.reason, info.domain, dict(info.metadata)) == (
            "THING_MISSING",
            "aqueduct",
            {"param": "id"},
        )

    on_server(test)


def test_a_streaming_handler_keeps_what_it_wrote_and_ends_with_the_status() -> None:
    async def test(channel: grpc.aio.Channel) -> None:
        call = channel.unary_stream("/test.Probe/WriteThenRefuse")(b"", timeout=10)
        received = []
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for message in call:
                received.append(message)
        assert received == [b"first"]
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        info = error_info(caught.value)
        assert info is not None and info.reason == "THING_MISSING"

    on_server(test)


def test_an_unexpected_error_is_internal_with_its_details_only_in_the_log(lines: Lines) -> None:
    async def test(channel: grpc.aio.Channel) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await channel.unary_unary("/test.Probe/Crash")(b"", timeout=10)
        assert caught.value.code() == grpc.StatusCode.INTERNAL
        assert "secret" not in (caught.value.details() or "")

    on_server(test)
    failed = [line for line in lines.lines if line["msg"] == "call failed"]
    assert len(failed) == 1 and "a secret detail" in failed[0]["exc"]
    assert failed[0]["method"] == "/test.Probe/Crash"


def test_log_lines_carry_the_request_id_from_metadata_or_message_never_a_stale_one(
    lines: Lines,
) -> None:
    async def test(channel: grpc.aio.Channel) -> None:
        by_metadata = channel.unary_unary("/test.Probe/EchoId")
        by_message = channel.unary_unary(
            "/test.Probe/EchoMessageId",
            request_serializer=pb.CreateEmbeddingsRequest.SerializeToString,
        )
        assert await by_metadata(b"", metadata=(("x-request-id", "req-meta"),)) == b"req-meta"
        assert await by_metadata(b"") == b""  # the previous call's id does not linger
        message = pb.CreateEmbeddingsRequest(model="m", request_id="req-message")
        # In the message, the id is read from there and metadata is not looked at.
        assert await by_message(message, metadata=(("x-request-id", "other"),)) == b"req-message"

    on_server(test)
    handled = [line.get("request_id") for line in lines.lines if line["msg"] == "handled"]
    assert handled == ["req-meta", None, "req-message"]
