"""Kept Responses API answers in the files service: team scope, size limit,
retention and purge, on a migrated SQLite database."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from core.errors import Kind, ServiceError
from services.files.kept_responses import ResponseKeeper
from services.files.records import KeptResponse
from services.files.store import FileStore

NOW = 1_700_000_000
TTL = 3600


class Clock:
    def __init__(self) -> None:
        self.now = float(NOW)

    def __call__(self) -> float:
        return self.now


def kept(response_id: str = "resp_1", team: str = "t", size: int = 10) -> KeptResponse:
    return KeptResponse(
        id=response_id,
        team=team,
        created_at=NOW,
        expires_at=0,
        response_json="{" + " " * size + "}",
        input_items_json="[]",
        conversation_json="[]",
    )


@pytest.fixture
def keeper(tmp_path: Path) -> tuple[ResponseKeeper, Clock]:
    store = FileStore(f"sqlite:///{tmp_path / 'aqueduct.db'}")
    store.migrate()
    clock = Clock()
    return ResponseKeeper(store, TTL, max_bytes=1000, clock=clock), clock


def test_kept_for_its_team_until_it_expires(keeper: tuple[ResponseKeeper, Clock]) -> None:
    responses, clock = keeper
    assert asyncio.run(responses.put(kept())) == NOW + TTL
    assert asyncio.run(responses.get("t", "resp_1")).expires_at == NOW + TTL
    with pytest.raises(ServiceError) as other:
        asyncio.run(responses.get("other", "resp_1"))
    assert other.value.kind is Kind.NOT_FOUND
    with pytest.raises(ServiceError):
        asyncio.run(responses.delete("other", "resp_1"))
    clock.now = NOW + TTL
    with pytest.raises(ServiceError):  # gone at once, before the purge
        asyncio.run(responses.get("t", "resp_1"))
    assert asyncio.run(responses.purge_expired()) == 1
    assert asyncio.run(responses.purge_expired()) == 0


def test_an_earlier_expiry_is_kept_and_a_later_one_is_capped(
    keeper: tuple[ResponseKeeper, Clock],
) -> None:
    responses, _ = keeper
    early = KeptResponse(**{**kept("resp_a").__dict__, "expires_at": NOW + 60})
    late = KeptResponse(**{**kept("resp_b").__dict__, "expires_at": NOW + 10 * TTL})
    assert asyncio.run(responses.put(early)) == NOW + 60
    assert asyncio.run(responses.put(late)) == NOW + TTL


def test_size_limit_and_duplicate_ids_are_refused(keeper: tuple[ResponseKeeper, Clock]) -> None:
    responses, _ = keeper
    with pytest.raises(ServiceError) as large:
        asyncio.run(responses.put(kept(size=2000)))
    assert large.value.reason == "RESPONSE_TOO_LARGE"
    asyncio.run(responses.put(kept()))
    with pytest.raises(ServiceError) as again:
        asyncio.run(responses.put(kept(team="other")))
    assert again.value.reason == "RESPONSE_EXISTS"
    asyncio.run(responses.delete("t", "resp_1"))
    with pytest.raises(ServiceError):
        asyncio.run(responses.get("t", "resp_1"))
