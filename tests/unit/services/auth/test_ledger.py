"""The usage ledger: written ahead in group commits, one row per reservation,
bounded while the database is down; retention purge, totals."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config

from core.errors import Kind, ServiceError
from services.auth import ledger as ledger_module
from services.auth.keys import KeyRecord, hash_secret, new_key_id
from services.auth.ledger import UsageLedger
from services.auth.store import MIGRATIONS, USAGE, VERSION_TABLE, KeyStore, metadata
from tests.schema_checks import drift, revision


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
        "reservation_id": uuid.uuid4().hex,
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


def test_concurrent_records_share_a_commit_and_stamp_last_use(
    store: KeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_id = new_key_id()
    store.insert(
        KeyRecord(id=key_id, name="n", team="t", preview="p", admin=False, models=None),
        hash_secret("s"),
    )
    now = time.time()
    real, batches = store.add_usage, []

    def counted(rows: list[dict[str, Any]]) -> None:
        batches.append(len(rows))
        real(rows)

    monkeypatch.setattr(store, "add_usage", counted)

    async def scenario() -> None:
        ledger = UsageLedger(store, retention_days=30)
        await asyncio.gather(*(ledger.record([row(key_id, now)]) for _ in range(50)))
        # Each call returned only once its row was committed.
        assert store.usage_totals({"key_id": key_id}, None)[0]["requests"] == 50

    asyncio.run(scenario())
    assert sum(batches) == 50 and len(batches) <= 2  # the first alone, the rest together
    record = store.get(key_id)
    assert record is not None and record.last_used_at == int(now)


def test_a_reservation_is_recorded_once_however_often_it_is_sent(store: KeyStore) -> None:
    first = row("a", time.time())
    store.add_usage([first])
    store.add_usage([first, row("a", time.time())])
    store.add_usage([dict(first, output_tokens=99)])  # a retry never changes the row
    assert store.usage_totals({"key_id": "a"}, None)[0] == {
        "requests": 2,
        "input_tokens": 20,
        "output_tokens": 10,
        "errors": 0,
    }


def test_waiting_rows_are_bounded_while_the_database_hangs(
    store: KeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    real = store.add_usage

    def hanging(rows: list[dict[str, Any]]) -> None:
        release.wait(10)
        real(rows)

    monkeypatch.setattr(store, "add_usage", hanging)

    async def scenario() -> None:
        ledger = UsageLedger(store, retention_days=30, max_pending=10)
        first = asyncio.create_task(ledger.record([row("a", time.time())]))  # in flight
        await asyncio.sleep(0.05)
        waiting = [asyncio.create_task(ledger.record([row("a", time.time())])) for _ in range(10)]
        await asyncio.sleep(0)
        assert ledger.pending == 10
        with pytest.raises(ServiceError) as refused:
            await ledger.record([row("a", time.time())])
        assert refused.value.kind is Kind.UNAVAILABLE
        assert refused.value.reason == "LEDGER_BACKLOG_FULL"
        release.set()
        await asyncio.gather(first, *waiting)
        await ledger.close()

    asyncio.run(scenario())
    assert store.usage_totals({"key_id": "a"}, None)[0]["requests"] == 11


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


def test_a_failed_write_fails_its_callers_and_the_next_one_succeeds(
    store: KeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    real, calls = store.add_usage, []

    def flaky(rows: list[dict[str, Any]]) -> None:
        calls.append(len(rows))
        if len(calls) == 1:
            raise ServiceError(Kind.UNAVAILABLE, "DATABASE_UNAVAILABLE", "down")
        real(rows)

    monkeypatch.setattr(store, "add_usage", flaky)
    lost = row("a", time.time())

    async def scenario() -> None:
        ledger = UsageLedger(store, retention_days=30)
        with pytest.raises(ServiceError):
            await ledger.record([lost])
        await ledger.record([lost, row("a", time.time())])  # the caller's retry

    asyncio.run(scenario())
    assert calls == [1, 2]
    assert store.usage_totals({"key_id": "a"}, None)[0]["requests"] == 2


def test_an_unreachable_database_is_unavailable_not_internal(tmp_path: Path) -> None:
    missing = KeyStore(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}")
    with pytest.raises(ServiceError) as refused:
        missing.add_usage([row("a", time.time())])
    assert refused.value.kind is Kind.UNAVAILABLE
    assert refused.value.reason == "DATABASE_UNAVAILABLE"
    assert not missing.database.up


def test_a_ledger_from_before_0002_upgrades_with_its_rows_and_then_dedupes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = KeyStore(url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = old.engine
    command.upgrade(config, "0001")
    old_row = row("a", time.time())
    del old_row["reservation_id"]
    with old.engine.begin() as connection:
        connection.execute(USAGE.insert(), [old_row, old_row])
    old.close()

    store = KeyStore(url)
    store.migrate()
    assert revision(store.engine, VERSION_TABLE) == "0005"
    assert drift(store.engine, metadata) == []  # the models match the migrations
    again = row("a", time.time())
    store.add_usage([again])
    store.add_usage([again])
    assert store.usage_totals({"key_id": "a"}, None)[0]["requests"] == 3


def test_a_lone_settle_is_committed_without_the_group_delay(
    store: KeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commit delay gathers settles that come together; a settle that comes
    alone (a lightly used replica) does not wait for company."""
    key_id = new_key_id()
    now = time.time()
    delay = 0.00123  # told apart from any other sleep
    delays: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:
        if seconds == delay:
            delays.append(seconds)
        await real_sleep(seconds)

    monkeypatch.setattr(ledger_module, "COMMIT_DELAY_S", delay)
    monkeypatch.setattr(asyncio, "sleep", sleep)

    async def scenario() -> None:
        ledger = UsageLedger(store, retention_days=30)
        for _ in range(3):  # one at a time: never delayed
            await ledger.record([row(key_id, now)])
        assert delays == []
        await asyncio.gather(*(ledger.record([row(key_id, now)]) for _ in range(5)))
        await ledger.record([row(key_id, now)])  # after a group: may wait for more
        assert delays == [delay]

    asyncio.run(scenario())
    assert store.usage_totals({"key_id": key_id}, None)[0]["requests"] == 9
