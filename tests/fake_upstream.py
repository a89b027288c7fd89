"""A fake OpenAI-compatible upstream on 127.0.0.1, for tests that route to one.

It runs uvicorn on its own event loop thread and answers `POST /v1/chat/completions`
and `POST /v1/embeddings` the way a test tells it: a `Reply` queued for the next
request (`queue`), else `default`. It records what reached it and how each answer
ended, so tests can check what the gateway sent and that it hung up:

    upstream = FakeUpstream().start()
    upstream.queue(Reply.stream("Hel", "lo", delay_s=0.05), Reply.status(503))
    ...                     # drive the gateway (models file url: upstream.url)
    upstream.received[-1]   # the last JSON body, e.g. ["messages"], ["stream_options"]
    upstream.active         # requests it is still answering
    upstream.disconnects    # time.monotonic() of each client that left mid-answer
    upstream.stop()

`time.monotonic()` is system-wide, so a test may compare it with its own clock.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import socket
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvicorn
import uvloop

Send = Callable[[dict[str, Any]], Any]


@dataclass(frozen=True)
class Reply:
    """How the fake answers one request."""

    kind: str = "stream"  # stream | json | echo | status | garbage | garbage_sse | hang | bomb
    chunks: tuple[str, ...] = ("Hello", " world")
    delay_s: float = 0.0  # between stream chunks
    first_delay_s: float = 0.0  # before the status line
    status: int = 200
    message: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    usage: bool = True  # send usage (a stream only when the request asked for it, like OpenAI)
    finish: str = "stop"
    break_after: int | None = None  # stream: cut the connection after this many chunks
    done: bool = True  # stream: end with `data: [DONE]`
    # stream: tool calls to make after the text, each (id, name, arguments in parts)
    tool_calls: tuple[tuple[str, str, tuple[str, ...]], ...] = ()

    @staticmethod
    def stream(*chunks: str, **options: Any) -> Reply:
        return Reply("stream", chunks or ("Hello", " world"), **options)

    @staticmethod
    def json(text: str = "Hello world", **options: Any) -> Reply:
        """A whole chat.completion, even when asked to stream."""
        return Reply("json", (text,), **options)

    @staticmethod
    def text(*chunks: str, **options: Any) -> Reply:
        """A `/completions` answer: streamed when the request streams, else JSON
        (with legacy logprobs, each chunk one token at -0.5)."""
        return Reply("text", chunks or ("Hello", " world"), **options)

    @staticmethod
    def echo(**options: Any) -> Reply:
        """Streams back, as its content, the JSON of the messages it received."""
        return Reply("echo", **options)

    @staticmethod
    def error(status: int, message: str = "fake failure", **options: Any) -> Reply:
        return Reply("status", status=status, message=message, **options)

    @staticmethod
    def garbage() -> Reply:
        """`application/json` that is not JSON."""
        return Reply("garbage")

    @staticmethod
    def garbage_sse() -> Reply:
        """An event stream whose first event is not JSON."""
        return Reply("garbage_sse")

    @staticmethod
    def bomb(size: int) -> Reply:
        """`application/json` gzipped: `size` zero bytes once inflated, ~1/1000 of it sent."""
        return Reply("bomb", status=size)

    @staticmethod
    def hang() -> Reply:
        """Never answers (until the client goes away)."""
        return Reply("hang")


@dataclass
class FakeUpstream:
    name: str = "fake"
    default: Reply = field(default_factory=Reply)
    replies: deque[Reply] = field(default_factory=deque)
    received: list[dict[str, Any]] = field(default_factory=list)  # JSON bodies, in order
    arrived: list[float] = field(default_factory=list)  # time.monotonic() of each, in order
    paths: list[str] = field(default_factory=list)
    client_ports: list[int] = field(default_factory=list)  # one per request: its connection
    headers: list[dict[str, str]] = field(default_factory=list)
    active: int = 0  # requests being answered now
    completed: int = 0  # answers sent in full
    disconnects: list[float] = field(default_factory=list)  # client left mid-answer
    port: int = 0
    journal: list[str] | None = None  # shared by several fakes: names, in arrival order

    def __post_init__(self) -> None:
        self._loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Future[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def requests(self) -> int:
        return len(self.received)

    def queue(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    def reset(self) -> None:
        self.replies.clear()
        self.received.clear()
        self.arrived.clear()
        self.paths.clear()
        self.client_ports.clear()
        self.headers.clear()
        self.disconnects.clear()
        self.completed = 0
        self.default = Reply()

    def start(self) -> FakeUpstream:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        self.port = listener.getsockname()[1]
        self._thread.start()
        config = uvicorn.Config(
            self._app,
            http="httptools",
            interface="asgi3",
            log_config=None,
            access_log=False,
            lifespan="off",
        )
        self._server = uvicorn.Server(config)

        async def serve() -> None:
            assert self._server is not None
            self._task = asyncio.ensure_future(self._server.serve(sockets=[listener]))
            while not self._server.started:
                if self._task.done():
                    self._task.result()
                await asyncio.sleep(0.01)

        asyncio.run_coroutine_threadsafe(serve(), self._loop).result(10)
        return self

    def stop(self) -> None:
        async def shutdown() -> None:
            assert self._server is not None and self._task is not None
            self._server.should_exit = True
            self._server.force_exit = True
            await asyncio.wait_for(self._task, 10)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(15)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def wait_for(self, condition: Callable[[], bool], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"fake upstream {self.name}: condition not met in {timeout} s")
            time.sleep(0.005)

    # -- the ASGI app --------------------------------------------------------

    async def _app(self, scope: dict[str, Any], receive: Callable[[], Any], send: Send) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        try:
            body = orjson.loads(b"".join(chunks))
        except orjson.JSONDecodeError:
            body = {}
        self.received.append(body)
        self.arrived.append(time.monotonic())
        if self.journal is not None:
            self.journal.append(self.name)
        self.paths.append(scope["path"])
        self.client_ports.append(scope["client"][1])
        self.headers.append({k.decode(): v.decode() for k, v in scope["headers"]})
        reply = self.replies.popleft() if self.replies else self.default
        self.active += 1
        state = {"finished": False}
        answer = asyncio.ensure_future(self._answer(scope["path"], body, reply, send, state))
        watcher = asyncio.ensure_future(self._watch(receive, state))
        try:
            await asyncio.wait((answer, watcher), return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.active -= 1
            for task in (answer, watcher):
                task.cancel()
        if answer.done() and not answer.cancelled() and answer.exception() is not None:
            raise answer.exception()  # type: ignore[misc]  # break_after: uvicorn drops the connection

    async def _watch(self, receive: Callable[[], Any], state: dict[str, bool]) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        if not state["finished"]:
            self.disconnects.append(time.monotonic())

    async def _answer(
        self, path: str, body: dict[str, Any], reply: Reply, send: Send, state: dict[str, bool]
    ) -> None:
        if reply.first_delay_s:
            await asyncio.sleep(reply.first_delay_s)
        if reply.kind == "hang":
            await asyncio.Event().wait()
        if reply.kind == "status":
            error = {"error": {"message": reply.message, "type": "fake_error", "param": None}}
            await self._send(
                send, reply.status, orjson.dumps(error), "application/json", reply, state
            )
        elif reply.kind == "garbage":
            await self._send(send, 200, b"{this is not json", "application/json", reply, state)
        elif reply.kind == "bomb":
            body = gzip_bomb(reply.status)
            reply = Reply(headers=(("content-encoding", "gzip"),))
            await self._send(send, 200, body, "application/json", reply, state)
        elif reply.kind == "garbage_sse":
            await self._send(send, 200, b"data: {broken\n\n", "text/event-stream", reply, state)
        elif path.endswith("/embeddings"):
            await self._send(send, 200, _embeddings(body), "application/json", reply, state)
        elif reply.kind == "text":
            await self._text(body, reply, send, state)
        elif reply.kind == "json":
            await self._send(send, 200, _completion(body, reply), "application/json", reply, state)
        else:
            await self._stream(body, reply, send, state)
        self.completed += 1

    async def _send(
        self,
        send: Send,
        status: int,
        content: bytes,
        media: str,
        reply: Reply,
        state: dict[str, bool],
    ) -> None:
        headers = [(b"content-type", media.encode())]
        headers += [(k.encode(), v.encode()) for k, v in reply.headers]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        state["finished"] = True
        await send({"type": "http.response.body", "body": content})

    async def _text(
        self, body: dict[str, Any], reply: Reply, send: Send, state: dict[str, bool]
    ) -> None:
        await _text_answer(body, reply, send, state)

    async def _stream(
        self, body: dict[str, Any], reply: Reply, send: Send, state: dict[str, bool]
    ) -> None:
        headers = [(b"content-type", b"text/event-stream")]
        headers += [(k.encode(), v.encode()) for k, v in reply.headers]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        texts = reply.chunks
        if reply.kind == "echo":
            texts = (orjson.dumps(body.get("messages")).decode(),)
        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0}
        base["model"] = body.get("model", "")
        first = {**base, "choices": [{"index": 0, "delta": {"role": "assistant"}}]}
        await send({"type": "http.response.body", "body": _event(first), "more_body": True})
        for number, text in enumerate(texts):
            if reply.break_after is not None and number >= reply.break_after:
                raise ConnectionAbortedError("fake upstream: cut the stream on purpose")
            if number and reply.delay_s:
                await asyncio.sleep(reply.delay_s)
            chunk = {**base, "choices": [{"index": 0, "delta": {"content": text}}]}
            await send({"type": "http.response.body", "body": _event(chunk), "more_body": True})
        if reply.break_after is not None:
            raise ConnectionAbortedError("fake upstream: cut the stream on purpose")
        for index, (call_id, name, parts) in enumerate(reply.tool_calls):
            for number, part in enumerate(parts):
                call: dict[str, Any] = {"index": index, "function": {"arguments": part}}
                if number == 0:
                    call.update(id=call_id, type="function")
                    call["function"]["name"] = name
                delta = {"tool_calls": [call]}
                chunk = {**base, "choices": [{"index": 0, "delta": delta}]}
                await send({"type": "http.response.body", "body": _event(chunk), "more_body": True})
        tail = [{**base, "choices": [{"index": 0, "delta": {}, "finish_reason": reply.finish}]}]
        # OpenAI sends usage with every whole answer, with a stream only when asked.
        wants_usage = not body.get("stream") or (body.get("stream_options") or {}).get(
            "include_usage"
        )
        if reply.usage and wants_usage:
            tail.append({**base, "choices": [], "usage": _usage(body, texts)})
        events = b"".join(_event(c) for c in tail) + (b"data: [DONE]\n\n" if reply.done else b"")
        state["finished"] = True
        await send({"type": "http.response.body", "body": events})


async def _text_answer(
    body: dict[str, Any], reply: Reply, send: Send, state: dict[str, bool]
) -> None:
    base = {"id": "cmpl-fake", "object": "text_completion", "created": 0}
    base["model"] = body.get("model", "")
    if not body.get("stream"):
        tokens = list(reply.chunks)
        logprobs = {
            "tokens": tokens,
            "token_logprobs": [-0.5] * len(tokens),
            "top_logprobs": [{t: -0.5} for t in tokens],
            "text_offset": [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))],
        }
        choice = {"index": 0, "text": "".join(tokens), "finish_reason": reply.finish}
        choice["logprobs"] = logprobs if body.get("logprobs") is not None else None
        answer = {**base, "choices": [choice], "usage": _usage(body, reply.chunks)}
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        state["finished"] = True
        await send({"type": "http.response.body", "body": orjson.dumps(answer)})
        return
    headers = [(b"content-type", b"text/event-stream")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    events = [
        {**base, "choices": [{"index": 0, "text": t, "logprobs": None, "finish_reason": None}]}
        for t in reply.chunks
    ]
    events.append({**base, "choices": [{"index": 0, "text": "", "finish_reason": reply.finish}]})
    if (body.get("stream_options") or {}).get("include_usage"):
        events.append({**base, "choices": [], "usage": _usage(body, reply.chunks)})
    state["finished"] = True
    raw = b"".join(_event(e) for e in events) + b"data: [DONE]\n\n"
    await send({"type": "http.response.body", "body": raw})


def gzip_bomb(size: int) -> bytes:
    """A valid gzip body of `size` zero bytes (a multiple of 1 MiB), ~1 KiB per MiB:
    one 1 MiB block compressed on its own (a full flush), repeated."""
    block = bytes(1 << 20)
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = packer.compress(block) + packer.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(size >> 20):
        crc = zlib.crc32(block, crc)
    head = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    tail = struct.pack("<II", crc, size & 0xFFFFFFFF)
    return head + chunk * (size >> 20) + packer.flush() + tail


def _event(chunk: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


PROMPT_TOKENS = 11  # what the fake reports, so tests can tell reported from estimated


def _usage(body: dict[str, Any], texts: tuple[str, ...]) -> dict[str, int]:
    completion = len(texts)
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": completion,
        "total_tokens": PROMPT_TOKENS + completion,
    }


def _completion(body: dict[str, Any], reply: Reply) -> bytes:
    answer: dict[str, Any] = {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": body.get("model", ""),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply.chunks[0]},
                "finish_reason": reply.finish,
            }
        ],
    }
    if reply.usage:
        answer["usage"] = _usage(body, reply.chunks)
    return orjson.dumps(answer)


def fake_vector(text: str, dimensions: int) -> list[float]:
    """A deterministic vector per input, so tests can check order and content."""
    digest = hashlib.sha256(text.encode()).digest() * (dimensions // 32 + 1)
    return [(b - 128) / 128 for b in digest[:dimensions]]


def _embeddings(body: dict[str, Any]) -> bytes:
    inputs = body.get("input")
    items = inputs if isinstance(inputs, list) else [inputs]
    dimensions = body.get("dimensions") or 8
    data = []
    for index, item in enumerate(items):
        vector = fake_vector(orjson.dumps(item).decode(), dimensions)
        if body.get("encoding_format") == "base64":
            packed = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": packed})
        else:
            data.append({"object": "embedding", "index": index, "embedding": vector})
    usage = {"prompt_tokens": 3 * len(items), "total_tokens": 3 * len(items)}
    return orjson.dumps(
        {"object": "list", "data": data, "model": body.get("model"), "usage": usage}
    )
