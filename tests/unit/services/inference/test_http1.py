"""The upstream HTTP/1.1 client against small raw servers on 127.0.0.1: framing
(content-length, chunked, until close), keep-alive reuse and its stale-connection
retry, the pool bound, deadlines, cancellation closing the connection, gzip,
malformed answers, and connects that are refused or hang."""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest
import uvloop

from services.inference.http1 import (
    MAX_DECOMPRESSED_BYTES,
    ConnectTimeout,
    MalformedResponse,
    Pool,
    PoolBusy,
    Response,
    UpstreamClosed,
)
from tests.fake_upstream import gzip_bomb
from tests.processes import hanging_port

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]
REQUEST = b"POST /v1/x HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\n\r\n{}"


@pytest.fixture(params=["uvloop", "asyncio"])
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, None]], None]:
    def go(coro: Coroutine[Any, Any, None]) -> None:
        if request.param == "uvloop":
            uvloop.run(asyncio.wait_for(coro, 10))
        else:
            asyncio.run(asyncio.wait_for(coro, 10))

    return go


class Server:
    """Counts connections; `handler(reader, writer, n)` serves the n-th (from 0)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.closed = asyncio.Event()  # some connection saw EOF from the client
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n = self.connections
        self.connections += 1
        try:
            await self.handler(reader, writer, n)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    return head + await reader.readexactly(length)


def answer(body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        + extra
        + b"content-length: %d\r\n\r\n" % len(body)
        + body
    )


async def body_of(response: Response) -> bytes:
    try:
        return await response.read_all(1 << 30, lambda: AssertionError("too large"))
    finally:
        response.close()


def test_keep_alive_reuses_one_connection(run: Callable[..., None]) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while True:
            request = await read_request(reader)
            assert request.endswith(b"{}")
            writer.write(answer(b'{"ok":1}', b"x-multi: a\r\nX-Multi: b\r\n"))

    async def scenario() -> None:
        async with Server(handler) as server:
            pool = Pool(server.url, 10, 5.0)
            for _ in range(3):
                response = await pool.request(REQUEST)
                assert response.status_code == 200
                assert response.headers["content-type"] == "application/json"
                assert response.headers["x-multi"] == "a, b"
                assert await body_of(response) == b'{"ok":1}'
            assert server.connections == 1
            pool.close()

    run(scenario())


def test_a_complete_answer_left_unread_still_frees_its_connection(
    run: Callable[..., None],
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while True:
            await read_request(reader)
            writer.write(answer(b"unread"))

    async def scenario() -> None:
        async with Server(handler) as server:
            pool = Pool(server.url, 10, 5.0)
            response = await pool.request(REQUEST)
            await asyncio.sleep(0.05)  # the whole answer arrives; nobody takes it
            response.close()
            assert await body_of(await pool.request(REQUEST)) == b"unread"
            assert server.connections == 1
            pool.close()

    run(scenario())


def test_chunked_body_arrives_read_by_read(run: Callable[..., None]) -> None:
    release = [asyncio.Event() for _ in range(2)]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await release[0].wait()
        writer.write(b"6\r\nsecond\r\n5\r\nthird\r\n")
        await release[1].wait()
        writer.write(b"0\r\n\r\n")
        await reader.read()

    async def scenario() -> None:
        async with Server(handler) as server:
            pool = Pool(server.url, 10, 5.0)
            response = await pool.request(REQUEST)
            assert await response.take() == [b"first"]
            release[0].set()
            got: list[bytes] = []
            while len(got) < 2:
                got += await response.take() or []
            assert got == [b"second", b"third"]
            release[1].set()
            assert await response.take() is None
            response.close()
            pool.close()

    run(scenario())


def test_body_until_close_ends_with_the_connection(run: Callable[..., None]) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of it")
        await writer.drain()

    async def scenario() -> None:
        async with Server(handler) as server:
            pool = Pool(server.url, 10, 5.0)
            assert await body_of(await pool.request(REQUEST)) == b"all of it"
            assert await body_of(await pool.request(REQUEST)) == b"all of it"
            assert server.connections == 2  # never reused
            pool.close()

    run(scenario())


def test_stale_keep_alive_connection_is_retried_once_on_a_fresh_one(
    run: Callable[..., None],
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.write(answer(b"1"))
        await writer.drain()
        await read_request(reader)  # the second request on this connection: hang up

    async def scenario() -> None:
        async with Server(handler) as server:
            pool = Pool(server.url, 10, 5.0)
            assert await body_of(await pool.request(REQUEST)) == b"1"
            assert await body_of(await pool.request(REQUEST)) == b"1"
            assert server.connections == 2
            pool.close()

    run(scenario())


def test_a_fresh_connection_closed_before_answering_is_an_error(
    run: Callable[..., None],
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)

    async def scenario() -> None:
        async with Server(handler) as server:
            pool = Pool(server.url, 10, 5.0)
            with pytest.raises(UpstreamClosed):
                await pool.request(REQUEST)
            assert server.connections == 1
            pool.close()

    run(scenario())


def test_closing_an_unfinished_body_closes_the_connection(run: Callable[..., None]) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await writer.drain()
        assert await reader.read() == b""  # EOF: the client let go
        server.closed.set()

    async def scenario() -> None:
        nonlocal server
        async with Server(handler) as server:
            pool = Pool(server.url, 10, 5.0)
            response = await pool.request(REQUEST)
            assert await response.take() == [b"abc"]
            response.close()
            await asyncio.wait_for(server.closed.wait(), 1.0)
            pool.close()

    server: Server
    run(scenario())


def test_a_full_pool_waits_for_a_connection_to_come_back(run: Callable[..., None]) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while True:
            await read_request(reader)
            writer.write(answer(b"x"))

    async def scenario() -> None:
        async with Server(handler) as server:
            pool = Pool(server.url, 1, 5.0)
            first = await pool.request(REQUEST)
            second = asyncio.ensure_future(pool.request(REQUEST))
            await asyncio.sleep(0.05)
            assert not second.done()  # one connection, in use
            assert await body_of(first) == b"x"
            assert await body_of(await second) == b"x"
            assert server.connections == 1
            pool.close()

    run(scenario())


def test_a_pool_full_for_longer_than_its_wait_refuses_at_once_and_counts_it(
    run: Callable[..., None],
) -> None:
    """Beyond the pool, a request fails fast (the gateway answers 503), not a silent queue."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        await reader.read()  # a stream that never ends

    async def scenario() -> None:
        async with Server(handler) as server:
            pool = Pool(server.url, 1, 5.0, wait_s=0.2)
            held = await pool.request(REQUEST)
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(PoolBusy, match=r"all 1 connections .* in use for 0\.2 s"):
                await pool.request(REQUEST)
            assert 0.15 < loop.time() - started < 3.0
            assert pool.busy_refusals == 1
            held.close()
            pool.close()

    run(scenario())


def test_take_raises_timeout_after_the_deadline(run: Callable[..., None]) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        await reader.read()

    async def scenario() -> None:
        async with Server(handler) as server:
            pool = Pool(server.url, 10, 5.0)
            loop = asyncio.get_running_loop()
            response = await pool.request(REQUEST, loop.time() + 0.1)
            with pytest.raises(TimeoutError):
                await response.take()
            response.close()
            pool.close()

    run(scenario())


def test_gzip_bodies_are_decoded(run: Callable[..., None]) -> None:
    payload = b'{"text":"' + b"z" * 5000 + b'"}'

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.write(answer(gzip.compress(payload), b"content-encoding: gzip\r\n"))
        await reader.read()

    async def scenario() -> None:
        async with Server(handler) as server:
            pool = Pool(server.url, 10, 5.0)
            assert await body_of(await pool.request(REQUEST)) == payload
            pool.close()

    run(scenario())


def test_a_decompression_bomb_is_refused_past_the_bound(run: Callable[..., None]) -> None:
    bomb = gzip_bomb(MAX_DECOMPRESSED_BYTES + (8 << 20))

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.write(answer(bomb, b"content-encoding: gzip\r\n"))
        await reader.read()

    async def scenario() -> None:
        async with Server(handler) as server:
            pool = Pool(server.url, 10, 5.0)
            response = await pool.request(REQUEST)
            with pytest.raises(MalformedResponse, match="64 MiB once decompressed"):
                await body_of(response)
            pool.close()

    run(scenario())


def test_headers_past_64_kib_are_refused(run: Callable[..., None]) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nx-filler: ")
        for _ in range(1000):  # a header value that never ends
            writer.write(b"y" * 1024)
            await writer.drain()
        await reader.read()

    async def scenario() -> None:
        async with Server(handler) as server:
            pool = Pool(server.url, 10, 5.0)
            with pytest.raises(MalformedResponse, match="headers are larger than 64 KiB"):
                await pool.request(REQUEST)
            pool.close()

    run(scenario())


def test_a_large_body_is_read_whole_across_pauses(run: Callable[..., None]) -> None:
    payload = bytes(range(256)) * (3 * 4096 + 7)  # ~3 MiB: reading pauses and resumes

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.write(answer(payload))
        await writer.drain()
        await reader.read()

    async def scenario() -> None:
        async with Server(handler) as server:
            pool = Pool(server.url, 10, 5.0)
            response = await pool.request(REQUEST)
            await asyncio.sleep(0.2)  # let more than the pause threshold arrive unread
            assert await body_of(response) == payload
            pool.close()

    run(scenario())


@pytest.mark.parametrize(
    "reply",
    [b"NOT HTTP AT ALL\r\n\r\n", b"HTTP/1.1 200 OK\r\ncontent-encoding: br\r\n\r\n"],
    ids=["garbage", "unknown-encoding"],
)
def test_malformed_answers_are_errors(run: Callable[..., None], reply: bytes) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.write(reply)
        await reader.read()

    async def scenario() -> None:
        async with Server(handler) as server:
            pool = Pool(server.url, 10, 5.0)
            with pytest.raises(MalformedResponse):
                await pool.request(REQUEST)
            pool.close()

    run(scenario())


def test_refused_connection_is_a_connection_error(run: Callable[..., None]) -> None:
    async def scenario() -> None:
        async def nothing(*_: object) -> None:
            return None

        server = await asyncio.start_server(nothing, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        pool = Pool(f"http://127.0.0.1:{port}", 10, 5.0)
        with pytest.raises(ConnectionError) as caught:
            await pool.request(REQUEST)
        assert not isinstance(caught.value, ConnectTimeout)

    run(scenario())


def test_a_connect_that_hangs_fails_after_the_connect_timeout(run: Callable[..., None]) -> None:
    async def scenario(port: int) -> None:
        pool = Pool(f"http://127.0.0.1:{port}/v1", 1, 0.2)
        for _ in range(2):  # the second: the timed-out connect gave its pool slot back
            started = time.monotonic()
            with pytest.raises(ConnectTimeout, match=r"within 0\.2 s"):
                await asyncio.wait_for(pool.request(REQUEST), 5)
            assert 0.15 <= time.monotonic() - started < 2
        pool.close()

    with hanging_port() as port:
        run(scenario(port))
