"""The generation routes' fast path: same error shapes as Starlette's routes,
everything else still reaches Starlette."""

from __future__ import annotations

from types import SimpleNamespace

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from edge.app import HotRoutes
from edge.errors import ApiError
from edge.live_traffic import LiveTraffic


async def answer(_: Request) -> Response:
    return Response(b"ok")


async def refuse(_: Request) -> Response:
    raise ApiError(429, "Slow down.", code="rate_limit_exceeded")


async def crash(_: Request) -> Response:
    raise RuntimeError("a bug")


def client(chat: object, completions: object) -> TestClient:
    starlette = Starlette(routes=[Route("/v1/chat/completions", answer, methods=["POST"])])
    starlette.state.gateway = SimpleNamespace(
        chat=chat, completions=completions, live=LiveTraffic(threshold=1)
    )
    return TestClient(HotRoutes(starlette), raise_server_exceptions=False)


def test_posts_to_generation_routes_reach_their_handlers() -> None:
    http = client(answer, refuse)
    assert http.post("/v1/chat/completions").content == b"ok"
    assert http.post("/chat/completions").content == b"ok"
    refused = http.post("/completions", headers={"x-request-id": "r-1"})
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert refused.headers["x-request-id"] == "r-1"


def test_a_handler_bug_is_a_500_in_the_openai_shape() -> None:
    crashed = client(crash, crash).post("/v1/chat/completions")
    assert crashed.status_code == 500
    assert crashed.json()["error"]["type"] == "server_error"


def test_other_methods_and_paths_go_to_starlette() -> None:
    http = client(crash, crash)
    assert http.get("/v1/chat/completions").status_code == 405  # Starlette's answer
    # Not the fast path: Starlette redirects to the path without the slash.
    assert http.post("/v1/chat/completions/", follow_redirects=False).status_code == 307


def test_live_requests_are_counted_while_they_run_so_batches_yield() -> None:
    seen: list[int] = []
    live = LiveTraffic(threshold=1)

    async def watch(_: Request) -> Response:
        seen.append(live.in_flight)
        return Response(b"ok")

    starlette = Starlette(routes=[])
    starlette.state.gateway = SimpleNamespace(chat=watch, completions=crash, live=live)
    http = TestClient(HotRoutes(starlette), raise_server_exceptions=False)
    assert http.post("/v1/chat/completions").content == b"ok"
    assert http.post("/v1/completions").status_code == 500  # a crash still leaves
    assert seen == [1] and live.in_flight == 0
