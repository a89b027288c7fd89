"""Two auth replicas sharing PostgreSQL and Redis: one limit, one ledger, one revocation.

These run against this machine's real servers (CI starts them); elsewhere they
skip with the reason.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.admin_api import ADMIN, create_key, usage
from tests.services_available import (
    POSTGRES,
    REDIS,
    REDIS_URL,
    fresh_postgres_database,
    listening,
)
from tests.stack import Stack

MODEL = "smollm2-135m-instruct"

pytestmark = [
    pytest.mark.skipif(
        not listening(POSTGRES), reason="PostgreSQL is not running on 127.0.0.1:5432"
    ),
    pytest.mark.skipif(not listening(REDIS), reason="Redis is not running on 127.0.0.1:6379"),
]


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    with fresh_postgres_database() as url:
        yield url


@pytest.fixture(scope="module")
def replicated(tmp_path_factory: pytest.TempPathFactory, database: str) -> Iterator[Stack]:
    stack = Stack(
        data_dir=Path(tmp_path_factory.mktemp("replicated")),
        database_url=database,
        redis_url=REDIS_URL,
        auth_replicas=2,
    ).start()
    yield stack
    stack.stop()


def chat(stack: Stack, key: str) -> int:
    return httpx.post(
        f"{stack.base_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1},
        timeout=60,
    ).status_code


def test_both_replicas_serve_from_postgres(replicated: Stack) -> None:
    assert len(replicated.auth_ports) == 2
    assert replicated.auth is not None
    assert replicated.auth.store.engine.dialect.name == "postgresql"
    key = create_key(replicated.base_url)
    assert chat(replicated, key["key"]) == 200


def test_fifty_parallel_requests_across_two_replicas_admit_exactly_10(replicated: Stack) -> None:
    key = create_key(replicated.base_url, limits={"rpm": 10})
    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        statuses = list(pool.map(lambda _: chat(replicated, key["key"]), range(50)))
    assert statuses.count(200) == 10
    assert statuses.count(429) == 40


def test_revocation_reaches_the_edge_through_either_replica(replicated: Stack) -> None:
    for _ in range(4):  # admin calls round-robin over both replicas
        key = create_key(replicated.base_url)
        assert chat(replicated, key["key"]) == 200
        httpx.delete(
            f"{replicated.base_url}/v1/admin/keys/{key['id']}",
            headers={"Authorization": f"Bearer {key['key']}"},
        )  # not admin: refused
        assert (
            httpx.delete(
                f"{replicated.base_url}/v1/admin/keys/{key['id']}", headers=ADMIN
            ).status_code
            == 200
        )
        started = time.monotonic()
        while chat(replicated, key["key"]) != 401:
            assert time.monotonic() - started < 1.0, "revoked key still accepted after 1 s"
            time.sleep(0.02)


def test_ledger_rows_land_in_postgres(replicated: Stack) -> None:
    key = create_key(replicated.base_url)
    for _ in range(3):
        assert chat(replicated, key["key"]) == 200
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        rows = usage(replicated.base_url, key_id=key["id"])
        if rows and rows[0]["requests"] == 3:
            break
        time.sleep(0.1)
    assert rows[0]["requests"] == 3 and rows[0]["output_tokens"] == 3


def test_files_kept_in_postgres_are_read_into_a_chat(replicated: Stack) -> None:
    """The files service on the same PostgreSQL database as auth (its own
    migrations and version table): an upload is listed and used by id in a chat."""
    assert replicated.files is not None
    assert replicated.files.store.engine.dialect.name == "postgresql"
    client = replicated.sdk()
    uploaded = client.files.create(
        file=("note.txt", b"The code word is heron."), purpose="user_data"
    )
    assert uploaded.id in [f.id for f in client.files.list()]

    def prompt_tokens(*parts: dict[str, object]) -> int:
        answer = client.chat.completions.create(
            model=MODEL,
            max_tokens=1,
            messages=[
                {"role": "user", "content": [{"type": "text", "text": "Code word?"}, *parts]}
            ],
        )
        assert answer.usage is not None
        return answer.usage.prompt_tokens

    with_file = prompt_tokens({"type": "file", "file": {"file_id": uploaded.id}})
    assert with_file >= prompt_tokens() + 5  # the file's words reached the model
    client.files.delete(uploaded.id)
    assert uploaded.id not in [f.id for f in client.files.list()]
