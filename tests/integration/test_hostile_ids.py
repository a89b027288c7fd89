"""Request ids and path ids a hostile client chooses: an unsafe `x-request-id`
is replaced (never forwarded: gRPC refused it as metadata, a 500), and an id
in a path that no service could have made is 404 before any gRPC call (a 10 KB
one came back as a 429 "metadata size exceeds")."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.stack import ADMIN_KEY, Stack

ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
GENERATED = re.compile(r"[0-9a-f]{32}")
LONG_ID = "file-" + "a" * 10_000


@pytest.fixture(scope="module")
def http(stack: Stack) -> httpx.Client:
    return httpx.Client(base_url=stack.base_url, timeout=30)


@pytest.mark.parametrize(
    ("method", "path", "key", "status"),
    [
        ("GET", "/v1/files", ADMIN_KEY, 200),
        ("GET", "/v1/admin/keys", ADMIN_KEY, 200),
        ("GET", "/v1/models", "sk-aq-unknown-key", 401),
        ("POST", "/v1/chat/completions", "sk-aq-unknown-key", 401),
        ("GET", "/v1/files", "sk-aq-unknown-key", 401),
    ],
)
def test_a_non_ascii_request_id_is_replaced(
    http: httpx.Client, method: str, path: str, key: str, status: int
) -> None:
    answer = http.request(
        method,
        path,
        headers={"authorization": f"Bearer {key}", "x-request-id": "abcé".encode()},
        json={} if method == "POST" else None,
    )
    assert answer.status_code == status, answer.text
    assert GENERATED.fullmatch(answer.headers["x-request-id"])


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("req-1.a:b_C", True),
        ("r" * 128, True),
        ("r" * 129, False),
        ("has space", False),
        ("semi;colon", False),
        ("line\tbreak", False),
    ],
)
def test_only_safe_request_ids_are_kept(http: httpx.Client, given: str, kept: bool) -> None:
    answer = http.get("/v1/files", headers={**ADMIN, "x-request-id": given})
    assert answer.status_code == 200
    returned = answer.headers["x-request-id"]
    assert returned == given if kept else GENERATED.fullmatch(returned)


@pytest.mark.parametrize(
    ("method", "path", "code", "param"),
    [
        ("GET", f"/v1/files/{LONG_ID}", "file_not_found", "file_id"),
        ("DELETE", f"/v1/files/{LONG_ID}", "file_not_found", "file_id"),
        ("GET", f"/v1/files/{LONG_ID}/content", "file_not_found", "file_id"),
        ("GET", "/v1/files/file-é", "file_not_found", "file_id"),
        ("GET", f"/v1/admin/keys/key_{'0' * 10_000}", "key_not_found", "id"),
        ("DELETE", f"/v1/admin/keys/key_{'0' * 10_000}", "key_not_found", "id"),
        ("GET", f"/v1/admin/teams/{'t' * 10_000}", "team_not_found", "team"),
        ("GET", f"/v1/models/{'m' * 10_000}", "model_not_found", "model"),
    ],
)
def test_an_id_that_cannot_exist_is_404_before_any_call(
    http: httpx.Client, method: str, path: str, code: str, param: str
) -> None:
    answer = http.request(method, path, headers=ADMIN)
    assert answer.status_code == 404, answer.text
    error = answer.json()["error"]
    assert (error["code"], error["param"], error["type"]) == (code, param, "not_found_error")
    assert len(error["message"]) < 200


def test_a_non_admin_key_still_gets_403_for_a_malformed_key_id(http: httpx.Client) -> None:
    created = http.post("/v1/admin/keys", headers=ADMIN, json={"name": "not-admin"})
    user = {"authorization": f"Bearer {created.json()['key']}"}
    answer = http.get(f"/v1/admin/keys/key_{'0' * 10_000}", headers=user)
    assert answer.status_code == 403, answer.text


def test_a_chat_file_part_with_a_10_kb_file_id_is_404_naming_the_part(
    http: httpx.Client,
) -> None:
    answer = http.post(
        "/v1/chat/completions",
        headers=ADMIN,
        json={
            "model": "smollm2-135m-instruct",
            "messages": [
                {"role": "user", "content": [{"type": "file", "file": {"file_id": LONG_ID}}]}
            ],
        },
    )
    assert answer.status_code == 404, answer.text
    error = answer.json()["error"]
    assert error["param"] == "messages[0].content[0].file.file_id"
    assert error["code"] == "file_not_found"
