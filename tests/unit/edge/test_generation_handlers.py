"""However a generation request ends, its call is stopped and its quota settled,
even when it ends by cancellation or by a bug (chat and text completions)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from aqueduct.auth.v1 import auth_pb2
from starlette.requests import Request

from edge.chat import ChatRoute
from edge.completions import CompletionsRoute
from edge.limits import Admission, Usage
from edge.pipeline import GenerationHandler


class FakeAuthenticator:
    async def authenticate(self, headers: Any, request_id: str) -> auth_pb2.Principal:
        return auth_pb2.Principal(key_id="k", team="t")


class FakeLimiter:
    def __init__(self) -> None:
        self.settled: list[Usage] = []

    async def reserve(self, principal: auth_pb2.Principal, *_: Any) -> Admission:
        return Admission(principal, auth_pb2.Reservation(id="r"), {})

    def settle(self, admission: Admission, usage: Usage) -> None:
        self.settled.append(usage)


class BrokenCall:
    """A call whose first read fails with `error` (not an API error)."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.finished: bool | None = None

    async def read(self) -> object:
        raise self.error

    def done(self) -> bool:
        return False

    def finish(self, answered: bool) -> None:
        self.finished = answered


class FakeCalls:
    def __init__(self, call: BrokenCall) -> None:
        self.call = call

    async def start(self, request: object, stream: bool = True) -> BrokenCall:
        return self.call


def post(body: dict[str, Any]) -> Request:
    payload = orjson.dumps(body)
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "headers": [(b"content-type", b"application/json")],
        "query_string": b"",
    }
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": payload, "more_body": False}
        await asyncio.Event().wait()  # the client stays
        raise AssertionError("unreachable")

    return Request(scope, receive)


CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
TEXT = {"model": "m", "prompt": "hi"}


@pytest.mark.parametrize("kind", ["chat", "completions"])
@pytest.mark.parametrize(
    ("stream", "error"),
    [
        (True, RuntimeError("a bug")),
        (False, RuntimeError("a bug")),
        # Waiting for the first message (a non-streamed answer's cancel is the
        # client leaving: a 499, settled on the ApiError path).
        (True, asyncio.CancelledError()),
    ],
    ids=["stream-bug", "json-bug", "stream-cancelled"],
)
def test_a_request_that_breaks_still_ends_its_call_and_settles(
    kind: str, stream: bool, error: BaseException
) -> None:
    call, limiter = BrokenCall(error), FakeLimiter()
    route: Any = ChatRoute() if kind == "chat" else CompletionsRoute()
    handler = GenerationHandler(route, FakeAuthenticator(), limiter, FakeCalls(call), 1 << 20)  # type: ignore[arg-type]
    body = {**(CHAT if kind == "chat" else TEXT), "stream": stream}

    async def scenario() -> None:
        with pytest.raises(type(error)):
            await handler(post(body))

    asyncio.run(scenario())
    assert call.finished is False  # stopped, not taken as answered
    assert [(u.status, u.error_code) for u in limiter.settled] == [(500, "interrupted")]
