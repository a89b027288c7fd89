"""Hostile or careless clients cannot grow the edge: its resident memory, as a
real `python -m edge` process, stays flat over many requests that once leaked."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.processes import edge_process, rss_kib, wait_for

ADMIN_KEY = "sk-aq-memory-admin-0123456789abcdefghijklmnopqrstu"
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
MIB = 1024


def settled_rss_mib(pid: int) -> float:
    time.sleep(0.5)  # let the last answers' objects go (and their sockets close)
    return rss_kib(pid) / MIB


def test_an_expired_key_answered_from_the_cache_does_not_grow_the_edge(tmp_path: Path) -> None:
    with (
        edge_process(tmp_path, ADMIN_KEY) as (base, pid),
        httpx.Client(base_url=base, timeout=30) as http,
    ):
        expires_at = int(time.time()) + 3
        created = http.post(
            "/v1/admin/keys", headers=ADMIN, json={"name": "brief", "expires_at": expires_at}
        )
        assert created.status_code == 201, created.text
        key = {"authorization": f"Bearer {created.json()['key']}"}
        # Verified and cached as valid while auth's key events are watched.
        wait_for(lambda: http.get("/v1/files", headers=key).status_code == 200, 10, "the key")
        wait_for(lambda: time.time() > expires_at + 0.2, 10, "the key to expire")

        def expired_requests(count: int) -> None:
            # The generation routes: Starlette's own error handling would hide the leak.
            chat = {"model": "any", "messages": [{"role": "user", "content": "hi"}]}
            for _ in range(count):
                answer = http.post("/v1/chat/completions", headers=key, json=chat)
                assert answer.status_code == 401
            assert answer.json()["error"]["code"] == "key_expired"

        expired_requests(500)  # warm every path (and the allocator)
        before = settled_rss_mib(pid)
        expired_requests(3000)
        growth = settled_rss_mib(pid) - before
        print(f"edge RSS {before:.1f} MiB, growth over 3000 expired-key requests {growth:.1f} MiB")
        # The shared exception leaked ~9 KiB per request: ~27 MiB here.
        assert growth < 6, f"the edge grew by {growth:.1f} MiB"


BOUNDARY = "aqueduct-field-bomb"
FIELDS, FIELD_BYTES = 100_000, 1000


def field_bomb() -> Iterator[bytes]:
    """100,000 distinct 1,000-byte form fields before the file (~100 MB)."""
    value = "v" * FIELD_BYTES
    for start in range(0, FIELDS, 1000):
        yield "".join(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\n{value}\r\n'
            for i in range(start, start + 1000)
        ).encode()
    yield (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n\r\n'
        f"hello\r\n--{BOUNDARY}--\r\n"
    ).encode()


def test_a_multipart_field_bomb_is_refused_and_the_edge_stays_flat(tmp_path: Path) -> None:
    with (
        edge_process(tmp_path, ADMIN_KEY) as (base, pid),
        httpx.Client(base_url=base, timeout=120) as http,
    ):
        headers = {**ADMIN, "content-type": f"multipart/form-data; boundary={BOUNDARY}"}

        def bomb() -> None:
            answer = http.post("/v1/files", headers=headers, content=field_bomb())
            assert answer.status_code == 400, answer.text
            error = answer.json()["error"]
            assert error["param"] == "f16" and "fields" in error["message"], error

        bomb()
        before = settled_rss_mib(pid)
        for _ in range(3):
            bomb()
        growth = settled_rss_mib(pid) - before
        print(f"edge RSS {before:.1f} MiB, growth over 3 field bombs {growth:.1f} MiB")
        # Keeping every field grew the edge by ~105 MiB per request.
        assert growth < 8, f"the edge grew by {growth:.1f} MiB"
