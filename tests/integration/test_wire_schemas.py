"""Every kind of answer and stream chunk the gateway sends, checked against OpenAI's
own response schemas (../shared/reference/openai-openapi.yaml), as raw JSON."""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.fake_upstream import FakeUpstream, Reply
from tests.openai_schemas import problems
from tests.stack import ADMIN_KEY, Stack

HI = [{"role": "user", "content": "Say hi."}]
RATE_LIMIT_HEADERS = [
    f"x-ratelimit-{what}-{kind}"
    for what in ("limit", "remaining", "reset")
    for kind in ("requests", "tokens")
]


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream("schemas").start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def edge(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = Path(tmp_path_factory.mktemp("schemas"))
    config = root / "models.yaml"
    config.write_text(
        f"""
models:
  - name: fake
    backend: openai
    upstreams: [{{url: "{upstream.url}"}}]
"""
    )
    running = Stack(data_dir=root, models_config=config).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def http(edge: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=edge.base_url, headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=30
    ) as client:
        yield client


def conforms(name: str, instance: object) -> None:
    found = problems(name, instance)
    assert not found, f"{name}: {found}\n{orjson.dumps(instance).decode()[:2000]}"


def text_chunk_conforms(chunk: dict[str, Any]) -> None:
    """OpenAI has no schema of its own for text-completion chunks; they take
    CreateCompletionResponse's, which has no null `finish_reason` or `usage`, yet
    OpenAI's API (and the SDK's types) send both null until the last chunk, and
    so do we. Everything else must conform."""
    copy = orjson.loads(orjson.dumps(chunk))
    for choice in copy["choices"]:
        if choice["finish_reason"] is None:
            choice["finish_reason"] = "stop"
    if copy.get("usage", {}) is None:
        del copy["usage"]
    conforms("CreateCompletionResponse", copy)


def events(response: httpx.Response) -> list[Any]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    datas = [line[6:] for line in response.text.split("\n") if line.startswith("data: ")]
    assert datas[-1] == "[DONE]"
    return [orjson.loads(d) for d in datas[:-1]]


def answer(response: httpx.Response) -> Any:
    assert response.status_code < 300, response.text
    return response.json()


CHAT_CASES: dict[str, tuple[dict[str, Any], Reply]] = {
    "plain": ({}, Reply.stream("Hello", " world")),
    "usage": ({"stream_options": {"include_usage": True}}, Reply.stream("a", "b")),
    "logprobs": ({"logprobs": True, "top_logprobs": 2}, Reply.stream("x")),
    "n": ({"n": 2}, Reply.stream("x")),
    "tools": (
        {"tools": [{"type": "function", "function": {"name": "f"}}]},
        Reply.stream(tool_calls=(("call_1", "f", ('{"a"', ": 1}")),), finish="tool_calls"),
    ),
    "empty": ({}, Reply.stream("")),
}


@pytest.mark.parametrize("case", CHAT_CASES)
def test_chat_answers_and_chunks_conform(
    http: httpx.Client, upstream: FakeUpstream, case: str
) -> None:
    extra, reply = CHAT_CASES[case]
    body = {"model": "fake", "messages": HI, **extra}
    if "stream_options" not in extra:
        upstream.queue(reply)
        answered = answer(http.post("/v1/chat/completions", json=body))
        conforms("CreateChatCompletionResponse", answered)
    upstream.queue(reply)
    chunks = events(http.post("/v1/chat/completions", json={**body, "stream": True}))
    for chunk in chunks:
        conforms("CreateChatCompletionStreamResponse", chunk)


@pytest.mark.parametrize(
    "extra", [{}, {"logprobs": 2}, {"echo": True}, {"stream_options": {"include_usage": True}}]
)
def test_text_completions_and_chunks_conform(
    http: httpx.Client, upstream: FakeUpstream, extra: dict[str, Any]
) -> None:
    body = {"model": "fake", "prompt": "Say", **extra}
    if "stream_options" not in extra:
        upstream.queue(Reply.text("Hello", " world"))
        conforms("CreateCompletionResponse", answer(http.post("/v1/completions", json=body)))
    upstream.queue(Reply.text("Hello", " world"))
    for chunk in events(http.post("/v1/completions", json={**body, "stream": True})):
        text_chunk_conforms(chunk)


@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_embeddings_conform(http: httpx.Client, encoding: str) -> None:
    body = {"model": "fake", "input": ["a", "b"], "encoding_format": encoding}
    answered = answer(http.post("/v1/embeddings", json=body))
    if encoding == "base64":  # the schema knows only the float form: compare as floats
        for item in answered["data"]:
            packed = base64.b64decode(item["embedding"])
            item["embedding"] = list(struct.unpack(f"<{len(packed) // 4}f", packed))
    conforms("CreateEmbeddingResponse", answered)


def test_models_conform(http: httpx.Client) -> None:
    conforms("ListModelsResponse", answer(http.get("/v1/models")))
    conforms("Model", answer(http.get("/v1/models/fake")))


def test_file_objects_conform(http: httpx.Client) -> None:
    created = answer(
        http.post(
            "/v1/files",
            files={"file": ("notes.md", b"# notes")},
            data={"purpose": "user_data"},
        )
    )
    conforms("OpenAIFile", created)
    expiring = answer(
        http.post(
            "/v1/files",
            files={"file": ("batch.jsonl", b"{}\n")},
            data={"purpose": "batch"},
        )
    )
    conforms("OpenAIFile", expiring)
    conforms("OpenAIFile", answer(http.get(f"/v1/files/{created['id']}")))
    conforms("ListFilesResponse", answer(http.get("/v1/files")))
    conforms("DeleteFileResponse", answer(http.delete(f"/v1/files/{created['id']}")))


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/v1/chat/completions", {"model": "fake"}, 400),
        ("POST", "/v1/chat/completions", {"model": "nope", "messages": HI}, 404),
        ("POST", "/v1/embeddings", {"model": "fake", "input": []}, 400),
        ("GET", "/v1/files/file-unknown", None, 404),
        ("GET", "/v1/nowhere", None, 404),
    ],
)
def test_errors_conform(
    http: httpx.Client, method: str, path: str, body: object, status: int
) -> None:
    response = http.request(method, path, json=body)
    assert response.status_code == status, response.text
    conforms("ErrorResponse", response.json())


def test_an_error_mid_stream_is_an_error_object(http: httpx.Client, upstream: FakeUpstream) -> None:
    upstream.queue(Reply.stream("a", "b", "c", break_after=1))
    response = http.post(
        "/v1/chat/completions", json={"model": "fake", "messages": HI, "stream": True}
    )
    datas = [line[6:] for line in response.text.split("\n") if line.startswith("data: ")]
    *chunks, last = (orjson.loads(d) for d in datas)
    for chunk in chunks:
        conforms("CreateChatCompletionStreamResponse", chunk)
    conforms("ErrorResponse", last)


def test_every_answer_has_all_six_rate_limit_headers(
    http: httpx.Client, upstream: FakeUpstream
) -> None:
    """OpenAI sends them on every answer; a key with no token limit (the admin key
    has none at all) still gets the token ones."""
    upstream.queue(Reply.stream("x"))
    response = http.post("/v1/chat/completions", json={"model": "fake", "messages": HI})
    assert response.status_code == 200
    assert [h for h in RATE_LIMIT_HEADERS if h not in response.headers] == []
