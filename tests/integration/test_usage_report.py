"""The usage dashboard's report against a seeded ledger, on SQLite and PostgreSQL:
sums, means, buckets and breakdowns equal what the seeded rows add up to, and
a team key reads only its own team."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.errors import Kind, ServiceError
from services.auth.keys import KeyRecord, hash_secret
from services.auth.store import KeyStore
from services.auth.team_view import TeamView
from services.auth.usage_report import ReportScope, Summary
from tests.services_available import POSTGRES, fresh_postgres_database, listening

# A fixed day: 2026-11-30 00:00:00 UTC (a multiple of 86400).
DAY = 1_796_000_000 - 1_796_000_000 % 86400
SINCE, UNTIL = DAY + 3600, DAY + 86400 + 7200  # 25 hours, crossing a day boundary
KEYS = {"key_a1": "alpha", "key_a2": "alpha", "key_b1": "beta", "key_admin": "admin"}
MODELS = ["chat-small", "chat-big", "e5-small"]


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KeyStore]:
    if request.param == "sqlite":
        keys = KeyStore(f"sqlite:///{tmp_path / 'report.db'}")
        keys.migrate()
        yield keys
        keys.close()
        return
    if not listening(POSTGRES):
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
    with fresh_postgres_database() as url:
        keys = KeyStore(url)
        keys.migrate()
        yield keys
        keys.close()


def seeded_rows() -> list[dict[str, Any]]:
    """Rows in and around the range, on every route, with failures and streams;
    the edges: one row exactly at `since` (in), one exactly at `until` (out)."""
    chance = random.Random(16)
    rows = []
    times = [SINCE, UNTIL, SINCE - 0.5, UNTIL + 10]
    times += [chance.uniform(SINCE - 7200, UNTIL + 7200) for _ in range(600)]
    for i, when in enumerate(times):
        key_id = chance.choice(list(KEYS))
        model = chance.choice(MODELS)
        embedding = model == "e5-small"
        rows.append(
            {
                "request_id": f"r{i}",
                "reservation_id": uuid.uuid4().hex,
                "key_id": key_id,
                "team": KEYS[key_id],
                "model": model,
                "input_tokens": chance.randint(1, 500),
                "output_tokens": 0 if embedding else chance.randint(0, 300),
                "latency_ms": chance.randint(5, 4000),
                "ttft_ms": 0 if embedding else chance.choice([0, chance.randint(1, 900)]),
                "status": chance.choice([200, 200, 200, 200, 400, 429, 502]),
                "error_code": "",
                "user": chance.choice(["", "alice", "bob", "carol"]),
                "stream": chance.random() < 0.5,
                "created_at": when,
                "batch_id": "",
                "route": "/v1/embeddings"
                if embedding
                else chance.choice(
                    ["/v1/chat/completions", "/v1/completions", "/v1/responses", ""]
                ),
            }
        )
    return rows


def expected(rows: list[dict[str, Any]]) -> Summary:
    completions = [r for r in rows if r["route"] != "/v1/embeddings"]
    embeddings = [r for r in rows if r["route"] == "/v1/embeddings"]
    first_tokens = [r["ttft_ms"] for r in rows if r["ttft_ms"] > 0]
    return Summary(
        requests=len(rows),
        errors=sum(r["status"] >= 400 for r in rows),
        input_tokens=sum(r["input_tokens"] for r in rows),
        output_tokens=sum(r["output_tokens"] for r in rows),
        completion_requests=len(completions),
        completion_latency_ms=sum(r["latency_ms"] for r in completions) / len(completions)
        if completions
        else 0.0,
        embedding_requests=len(embeddings),
        embedding_latency_ms=sum(r["latency_ms"] for r in embeddings) / len(embeddings)
        if embeddings
        else 0.0,
        ttft_ms=sum(first_tokens) / len(first_tokens) if first_tokens else 0.0,
    )


def same(actual: Summary, wanted: Summary) -> None:
    for name in Summary.__dataclass_fields__:
        assert getattr(actual, name) == pytest.approx(getattr(wanted, name)), name


def seed(store: KeyStore) -> list[dict[str, Any]]:
    for key_id, team in KEYS.items():
        store.insert(
            KeyRecord(
                id=key_id,
                name=key_id,
                team=team,
                preview="sk-aq-…",
                admin=key_id == "key_admin",
                models=None,
            ),
            hash_secret(key_id),
        )
    rows = seeded_rows()
    store.add_usage(rows)
    return [r for r in rows if SINCE <= r["created_at"] < UNTIL]


def grouped(rows: list[dict[str, Any]], field: str) -> dict[str, Summary]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[r[field]].append(r)
    return {name: expected(members) for name, members in groups.items()}


def report(store: KeyStore, caller: str, **scope: Any) -> Any:
    view = TeamView(store)
    record = store.get(caller)
    assert record is not None
    settings = {"since": SINCE, "until": UNTIL, "bucket": "hour", **scope}
    return asyncio.run(view.report(record, ReportScope(**settings)))


def test_an_admin_report_sums_every_row_in_range(store: KeyStore) -> None:
    rows = seed(store)
    result = report(store, "key_admin", top=100)
    same(result.summary, expected(rows))
    for name, wanted in grouped(rows, "model").items():
        same(dict(result.models)[name], wanted)
    assert [n for n, _ in result.models] == sorted(
        dict(result.models), key=lambda n: (-dict(result.models)[n].requests, n)
    )
    for name, wanted in grouped(rows, "team").items():
        same(dict(result.teams)[name], wanted)
    for name, wanted in grouped(rows, "key_id").items():
        same(dict(result.keys)[name], wanted)
    assert result.users == []  # only for one key

    # Hour buckets on UTC boundaries; empty hours left out; they add up.
    for row in rows:
        row["hour"] = int(row["created_at"] // 3600 * 3600)
    buckets = dict(result.buckets)
    assert set(buckets) == {r["hour"] for r in rows}
    for start, wanted in grouped(rows, "hour").items():
        same(buckets[start], wanted)
    assert sum(b.requests for b in buckets.values()) == len(rows)


def test_day_and_minute_buckets_split_where_utc_days_and_minutes_do(store: KeyStore) -> None:
    rows = seed(store)
    days = dict(report(store, "key_admin", bucket="day").buckets)
    assert set(days) == {DAY, DAY + 86400}
    assert days[DAY].requests == sum(r["created_at"] < DAY + 86400 for r in rows)
    minutes = report(store, "key_admin", bucket="minute", since=SINCE, until=SINCE + 3600)
    in_hour = [r for r in rows if r["created_at"] < SINCE + 3600]
    for r in in_hour:
        r["minute"] = int(r["created_at"] // 60 * 60)
    assert {s: b.requests for s, b in minutes.buckets} == {
        s: w.requests for s, w in grouped(in_hour, "minute").items()
    }


def test_a_key_report_breaks_down_by_user_and_top_limits_the_lists(store: KeyStore) -> None:
    rows = [r for r in seed(store) if r["key_id"] == "key_a1"]
    result = report(store, "key_admin", key_id="key_a1", top=2)
    same(result.summary, expected(rows))
    users = grouped(rows, "user")
    assert len(result.users) == 2  # the two busiest
    for name, summary in result.users:
        same(summary, users[name])
    assert result.users[0][1].requests >= max(sorted(u.requests for u in users.values())[:-1])
    assert [k for k, _ in result.keys] == ["key_a1"]


def test_a_team_key_reads_its_own_team_only(store: KeyStore) -> None:
    rows = [r for r in seed(store) if r["team"] == "alpha"]
    result = report(store, "key_a2")  # no team named: its own
    assert result.team == "alpha"
    same(result.summary, expected(rows))
    assert {k for k, _ in result.keys} == {"key_a1", "key_a2"}
    assert result.teams == []
    same(
        report(store, "key_a2", key_id="key_a1").summary,
        expected([r for r in rows if r["key_id"] == "key_a1"]),
    )
    with pytest.raises(ServiceError) as denied:
        report(store, "key_a2", team="beta")
    assert denied.value.kind == Kind.PERMISSION_DENIED and denied.value.param == "team"
    with pytest.raises(ServiceError) as hidden:
        report(store, "key_a2", key_id="key_b1")  # another team's key: as if unknown
    assert hidden.value.kind == Kind.NOT_FOUND and hidden.value.param == "key_id"
    keys = asyncio.run(TeamView(store).keys(store.get("key_a2"), ""))  # type: ignore[arg-type]
    assert {k.id for k in keys} == {"key_a1", "key_a2"}


def test_bad_scopes_are_refused_naming_the_field(store: KeyStore) -> None:
    seed(store)
    for scope, param in (
        ({"bucket": "week"}, "bucket"),
        ({"since": UNTIL, "until": SINCE}, "until"),
        ({"bucket": "minute", "since": 0, "until": UNTIL}, "bucket"),  # too many buckets
        ({"top": 0}, "top"),
        ({"top": 101}, "top"),
    ):
        with pytest.raises(ServiceError) as refused:
            report(store, "key_admin", **scope)
        assert refused.value.kind == Kind.INVALID_ARGUMENT and refused.value.param == param


def test_an_empty_range_is_all_zeros(store: KeyStore) -> None:
    seed(store)
    result = report(store, "key_admin", since=DAY - 10 * 86400, until=DAY - 9 * 86400)
    same(result.summary, Summary())
    assert result.buckets == [] and result.models == [] and result.keys == []
