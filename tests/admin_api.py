"""Small helpers for tests that use the admin HTTP API."""

from __future__ import annotations

from typing import Any

import httpx

from tests.stack import ADMIN_KEY

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def create_key(base_url: str, **body: Any) -> dict[str, Any]:
    answer = httpx.post(f"{base_url}/v1/admin/keys", headers=ADMIN, json={"name": "t", **body})
    assert answer.status_code == 201, answer.text
    return answer.json()  # type: ignore[no-any-return]


def usage(base_url: str, **query: Any) -> list[dict[str, Any]]:
    answer = httpx.get(f"{base_url}/v1/admin/usage", headers=ADMIN, params=query)
    assert answer.status_code == 200, answer.text
    return answer.json()["data"]  # type: ignore[no-any-return]
