"""The usage ledger: batched writes, flush on close, retention purge, totals."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from services.auth.keys import KeyRecord, hash_secret, new_key_id
from services.auth.ledger import UsageLedger
from services.auth.store import KeyStore


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    keys = KeyStore(f"sqlite:///{tmp_path / 'ledger.db'}")
    keys.migrate()
    return keys


def row(
    key_id: str, created_at: float, status: int = 200, model: str = "m", **extra: Any
) -> dict[str, Any]:
    return {
        "request_id": "r",
        "key_id": key_id,
        "team": "t",
        "model": model,
        "input_tokens": 10,
        "output_tokens": 5,
        "latency_ms": 3,
        "ttft_ms": 1,
        "status": status,
        "error_code": "",
        "user": "",
        "stream": False,
        "created_at": created_at,
        **extra,
    }


def test_rows_queued_are_flushed_on_close_and_stamp_last_use(store: KeyStore) -> None:
    key_id = new_key_id()
    store.insert(
        KeyRecord(id=key_id, name="n", team="t", preview="p", admin=False, models=None),
        hash_secret("s"),
    )
    now = time.time()

    async def scenario() -> None:
        ledger = UsageLedger(store, retention_days=30)
        ledger.start()
        for _ in range(3):
            ledger.add(row(key_id, now))
        await ledger.close()  # well before the periodic flush

    asyncio.run(scenario())
    assert store.usage_totals({"key_id": key_id}, None) == [
        {"requests": 3, "input_tokens": 30, "output_tokens": 15, "errors": 0}
    ]
    record = store.get(key_id)
    assert record is not None and record.last_used_at == int(now)


def test_totals_group_and_count_errors(store: KeyStore) -> None:
    now = time.time()
    store.add_usage(
        [row("a", now, model="x"), row("a", now, 429, model="y"), row("b", now, model="x")]
    )
    by_model = store.usage_totals({}, "model")
    assert [(r["model"], r["requests"], r["errors"]) for r in by_model] == [
        ("x", 2, 0),
        ("y", 1, 1),
    ]
    assert store.usage_totals({"key_id": "a", "model": "y"}, "key")[0]["key"] == "a"


def test_purge_drops_only_rows_past_retention(store: KeyStore) -> None:
    now = time.time()
    store.add_usage([row("a", now - 10 * 86400), row("a", now)])
    assert store.purge_usage(now - 86400) == 1
    assert store.usage_totals({}, None)[0]["requests"] == 1


def test_rows_survive_a_failed_flush(store: KeyStore, monkeypatch: pytest.MonkeyPatch) -> None:
    real, calls = store.add_usage, []

    def flaky(rows: list[dict[str, Any]]) -> None:
        calls.append(len(rows))
        if len(calls) == 1:
            raise OSError("database unavailable")
        real(rows)

    monkeypatch.setattr(store, "add_usage", flaky)

    async def scenario() -> None:
        ledger = UsageLedger(store, retention_days=30)
        ledger.add(row("a", time.time()))
        with pytest.raises(OSError):
            await ledger.flush()
        ledger.add(row("a", time.time()))
        await ledger.flush()

    asyncio.run(scenario())
    assert calls == [1, 2]  # the failed row went again, with the new one
    assert store.usage_totals({"key_id": "a"}, None)[0]["requests"] == 2
