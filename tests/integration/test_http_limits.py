"""The edge's HTTP limits over raw sockets, against the real `python -m edge`:
head size and count (431), head and body read timeouts (408), the keep-alive
idle timeout, the HTTP parser's own refusals (400), all in OpenAI's error
shape and before any key check; and an early answer read by a client that is
still sending, rather than a connection reset."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.processes import edge_process, rss_kib

KEY = "sk-aq-http-limits-0123456789abcdefghijklmnopqrstuvw"
TIMEOUTS = {
    "AQUEDUCT_HTTP_HEADER_TIMEOUT_S": "1",
    "AQUEDUCT_HTTP_BODY_TIMEOUT_S": "1",
    "AQUEDUCT_HTTP_IDLE_TIMEOUT_S": "2",
    "AQUEDUCT_MAX_BODY_MB": "1",
}
WAIT_S = 15  # far beyond every timeout above: a hang fails, a slow machine does not


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int]]:
    """The edge's port and pid."""
    tmp_path = Path(tmp_path_factory.mktemp("http-limits"))
    with edge_process(tmp_path, KEY, **TIMEOUTS) as (base, pid):
        yield int(base.rpartition(":")[2]), pid


@pytest.fixture(scope="module")
def port(edge: tuple[int, int]) -> int:
    return edge[0]


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything the edge sends until it closes the connection."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def openai_error(raw: bytes, status: int) -> dict[str, object]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith(f"HTTP/1.1 {status} "), raw[:300]
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert headers["x-request-id"]
    error = orjson.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return dict(error)


def head(*headers: str, request: str = "GET /v1/models HTTP/1.1") -> bytes:
    return "\r\n".join((request, "Host: edge", *headers, "", "")).encode("latin-1")


def exchange(port: int, payload: bytes) -> bytes:
    with connect(port) as sock:
        sock.sendall(payload)
        return read_all(sock)


def test_a_huge_header_is_refused_with_431_before_any_key_check(edge: tuple[int, int]) -> None:
    port, pid = edge
    exchange(port, head("X-Big: " + "a" * 1024 * 1024))  # warm the paths
    with open(f"/proc/{pid}/clear_refs", "w") as control:
        control.write("5")  # VmHWM starts again from the current RSS
    before = rss_kib(pid, "VmRSS")
    # 32 MB of one header, no key: the edge reads 64 KiB of it, answers, drops the rest.
    error = openai_error(exchange(port, head("X-Big: " + "a" * 32 * 1024 * 1024)), 431)
    assert error["code"] == "request_headers_too_large"
    assert "64 KiB" in str(error["message"])
    growth_mib = (rss_kib(pid, "VmHWM") - before) / 1024
    assert growth_mib < 8, f"the edge grew by {growth_mib:.0f} MiB"  # it was 81 MiB


def test_too_many_headers_are_refused_with_431(port: int) -> None:
    headers = [f"X-H{i}: v" for i in range(101)]
    error = openai_error(exchange(port, head(*headers)), 431)
    assert error["code"] == "too_many_headers"


def test_large_heads_within_the_limits_are_served(port: int) -> None:
    headers = [f"X-H{i}: v" for i in range(90)] + ["X-Big: " + "a" * 60_000]
    with connect(port) as sock:
        sock.sendall(head(*headers, "Connection: close"))
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]  # on to the key check


def test_a_trickled_head_gets_408_at_the_header_timeout(port: int) -> None:
    started = time.monotonic()
    with connect(port) as sock:
        for byte in head("Authorization: Bearer " + KEY)[:-2]:  # never completes
            try:
                sock.send(bytes([byte]))
            except OSError:
                break  # closed on us: what we want
            time.sleep(0.05)
            if time.monotonic() - started > WAIT_S:
                break
        answer = read_all(sock)
    error = openai_error(answer, 408)
    assert error["code"] == "request_timeout"
    assert time.monotonic() - started < WAIT_S


def test_a_connection_that_sends_nothing_is_closed(port: int) -> None:
    with connect(port) as sock:
        assert read_all(sock) == b""


def test_a_stalled_body_gets_408_at_the_body_timeout(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(
            head(
                f"Authorization: Bearer {KEY}",
                "Content-Type: application/json",
                "Content-Length: 100",
                request="POST /v1/embeddings HTTP/1.1",
            )
            + b'{"model":'
        )
        error = openai_error(read_all(sock), 408)
    assert error["code"] == "request_timeout"


def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(head(request="GET /healthz HTTP/1.1"))
        answer = b""
        while not answer.endswith(b'{"status":"ok"}'):
            answer += sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200 "), answer
        started = time.monotonic()
        assert read_all(sock) == b""  # closed by the edge, silently
        assert time.monotonic() - started >= 1.5


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(head("X-A: a\x00b"), id="NUL in a header"),
        pytest.param(head("X-A: a", " folded"), id="obs-fold"),
        pytest.param(
            head(
                "Content-Length: 5", "Transfer-Encoding: chunked", request="POST /v1/files HTTP/1.1"
            )
            + b"0\r\n\r\n",
            id="Content-Length with Transfer-Encoding",
        ),
        pytest.param(
            head("Transfer-Encoding: chunked", request="POST /v1/files HTTP/1.1") + b"zz\r\nhi\r\n",
            id="bad chunk size",
        ),
    ],
)
def test_the_http_parsers_refusals_are_400_in_openai_shape(port: int, payload: bytes) -> None:
    error = openai_error(exchange(port, payload), 400)
    assert error["code"] == "invalid_http_request"
    assert str(error["message"]).startswith("Invalid HTTP request: ")


def test_a_client_sending_a_body_over_the_limit_before_reading_gets_the_413(port: int) -> None:
    body = b"x" * (16 * 1024 * 1024)  # far more than the socket buffers hold
    with connect(port) as sock:
        sock.sendall(
            head(
                f"Authorization: Bearer {KEY}",
                "Content-Type: application/json",
                f"Content-Length: {len(body)}",
                "Connection: close",
                request="POST /v1/chat/completions HTTP/1.1",
            )
            + body
        )  # a connection reset would raise here, or in read_all
        answer = read_all(sock)
    head_line, _, payload = answer.partition(b"\r\n\r\n")
    assert head_line.startswith(b"HTTP/1.1 413 "), answer[:300]
    assert orjson.loads(payload)["error"]["code"] == "request_too_large"


def test_pipelined_requests_in_one_write_are_all_answered(port: int) -> None:
    requests = head(request="GET /healthz HTTP/1.1") * 3 + head(
        "Connection: close", request="GET /healthz HTTP/1.1"
    )
    answers = exchange(port, requests)
    assert answers.count(b"HTTP/1.1 200 ") == 4, answers
