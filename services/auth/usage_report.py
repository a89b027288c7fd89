"""The usage dashboard's numbers, summed and bucketed by the database.

A report is time buckets plus breakdowns (top keys and teams, models, and the
`user` field of one key) of the `usage_records` rows in a range, each summed by
the database: an index range scan on `created_at` (or `(team, created_at)` /
`(key_id, created_at)`, migration 0005), so rows never leave it. PostgreSQL
computes everything in one read of the range (GROUPING SETS); SQLite, which has
none, in one GROUP BY per part. The totals are the buckets added up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    ColumnElement,
    Connection,
    Integer,
    Select,
    case,
    cast,
    func,
    select,
    tuple_,
)

from services.auth.store import USAGE, KeyStore

BUCKET_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}
MAX_BUCKETS = 1500
EMBEDDINGS_ROUTE = "/v1/embeddings"


@dataclass(frozen=True)
class ReportScope:
    since: float
    until: float
    bucket: str  # a BUCKET_SECONDS key
    team: str = ""  # "": every team
    key_id: str = ""  # "": every key
    top: int = 10


@dataclass
class Summary:
    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    completion_requests: int = 0
    completion_latency_ms: float = 0.0
    embedding_requests: int = 0
    embedding_latency_ms: float = 0.0
    ttft_ms: float = 0.0


@dataclass
class Report:
    summary: Summary
    buckets: list[tuple[int, Summary]] = field(default_factory=list)
    keys: list[tuple[str, Summary]] = field(default_factory=list)
    teams: list[tuple[str, Summary]] = field(default_factory=list)
    models: list[tuple[str, Summary]] = field(default_factory=list)
    users: list[tuple[str, Summary]] = field(default_factory=list)
    team: str = ""  # the team it covers; "": every team


def _measures() -> list[ColumnElement[Any]]:
    """Sums and the parts of each mean (sum, count), so means need no second pass;
    as few conditional sums as will do (they are most of the work per row):
    completions are all requests but embeddings, and rows without a first token
    add 0 to `ttft_total`."""
    embedding = USAGE.c.route == EMBEDDINGS_ROUTE
    return [
        func.count().label("requests"),
        func.sum(cast(USAGE.c.status >= 400, Integer)).label("errors"),
        func.sum(USAGE.c.input_tokens).label("input_tokens"),
        func.sum(USAGE.c.output_tokens).label("output_tokens"),
        func.sum(USAGE.c.latency_ms).label("latency"),
        func.sum(case((embedding, 1), else_=0)).label("embedding_requests"),
        func.sum(case((embedding, USAGE.c.latency_ms), else_=0)).label("embedding_latency"),
        func.sum(cast(USAGE.c.ttft_ms > 0, Integer)).label("ttft_requests"),
        func.sum(USAGE.c.ttft_ms).label("ttft_total"),
    ]


MEASURES = (
    "requests",
    "errors",
    "input_tokens",
    "output_tokens",
    "latency",
    "embedding_requests",
    "embedding_latency",
    "ttft_requests",
    "ttft_total",
)


def _sums(row: Any) -> dict[str, int]:
    m = row._mapping
    return {name: int(m[name] or 0) for name in MEASURES}


def _summary_of(sums: dict[str, int]) -> Summary:
    embeddings = sums["embedding_requests"]
    completions = sums["requests"] - embeddings
    completion_latency = sums["latency"] - sums["embedding_latency"]
    ttft_requests = sums["ttft_requests"]
    return Summary(
        requests=sums["requests"],
        errors=sums["errors"],
        input_tokens=sums["input_tokens"],
        output_tokens=sums["output_tokens"],
        completion_requests=completions,
        completion_latency_ms=completion_latency / completions if completions else 0.0,
        embedding_requests=embeddings,
        embedding_latency_ms=sums["embedding_latency"] / embeddings if embeddings else 0.0,
        ttft_ms=sums["ttft_total"] / ttft_requests if ttft_requests else 0.0,
    )


def _bucket_start(dialect: str, seconds: int) -> ColumnElement[Any]:
    """`created_at` rounded down to its bucket, in unix seconds (UTC boundaries).
    PostgreSQL's CAST rounds to nearest, so it floors; SQLite's truncates, and
    ledger times are positive, so truncation is the floor there."""
    if dialect == "postgresql":
        start = cast(func.floor(USAGE.c.created_at / seconds), BigInteger)
    else:
        start = cast(USAGE.c.created_at / seconds, BigInteger)
    return (start * seconds).label("start")


def bucket_count(scope: ReportScope) -> int:
    seconds = BUCKET_SECONDS[scope.bucket]
    return int((scope.until // seconds) - (scope.since // seconds)) + 1


class UsageReports:
    def __init__(self, store: KeyStore) -> None:
        self.engine = store.engine
        self.database = store.database  # its faults become UNAVAILABLE

    def _filtered(self, scope: ReportScope, *columns: Any) -> Select[Any]:
        stmt = select(*columns, *_measures()).where(
            USAGE.c.created_at >= scope.since, USAGE.c.created_at < scope.until
        )
        if scope.team:
            stmt = stmt.where(USAGE.c.team == scope.team)
        if scope.key_id:
            stmt = stmt.where(USAGE.c.key_id == scope.key_id)
        return stmt

    def report(self, scope: ReportScope) -> Report:
        start = _bucket_start(self.engine.dialect.name, BUCKET_SECONDS[scope.bucket])
        parts: dict[str, tuple[Column[Any], int | None]] = {
            "keys": (USAGE.c.key_id, scope.top),
            "models": (USAGE.c.model, None),  # every model with rows
        }
        if not scope.team and not scope.key_id:
            parts["teams"] = (USAGE.c.team, scope.top)
        if scope.key_id:
            parts["users"] = (USAGE.c.user, scope.top)
        # One connection; on PostgreSQL (READ COMMITTED) rows landing meanwhile may
        # show in one part and not another: for a dashboard, close enough.
        with self.database.guard(), self.engine.connect() as connection:
            if self.engine.dialect.name == "postgresql":
                # Room to hash every group set in memory rather than sort on disk
                # (this transaction only).
                connection.exec_driver_sql("SET LOCAL work_mem = '64MB'")
                buckets, groups = self._in_one_scan(connection, scope, start, parts)
            else:
                buckets, groups = self._scan_by_part(connection, scope, start, parts)
        # The totals are the buckets' sums added up: no scan of their own.
        totals = {name: sum(b[name] for _, b in buckets) for name in MEASURES}
        report = Report(summary=_summary_of(totals), team=scope.team)
        report.buckets = [(begins, _summary_of(sums)) for begins, sums in buckets]
        for part, rows in groups.items():
            setattr(report, part, [(name, _summary_of(sums)) for name, sums in rows])
        return report

    def _scan_by_part(
        self,
        connection: Connection,
        scope: ReportScope,
        start: ColumnElement[Any],
        parts: dict[str, tuple[Column[Any], int | None]],
    ) -> tuple[list[tuple[int, dict[str, int]]], dict[str, list[tuple[str, dict[str, int]]]]]:
        """A GROUP BY per part (SQLite has no GROUPING SETS)."""
        stmt = self._filtered(scope, start).group_by(start).order_by(start)
        buckets = [(int(row.start), _sums(row)) for row in connection.execute(stmt)]
        groups: dict[str, list[tuple[str, dict[str, int]]]] = {}
        for part, (column, limit) in parts.items():
            if not buckets:
                groups[part] = []
                continue
            grouped = (
                self._filtered(scope, column.label("name"))
                .group_by(column)
                .order_by(func.count().desc(), column)
            )
            if limit:
                grouped = grouped.limit(limit)
            groups[part] = [(row.name, _sums(row)) for row in connection.execute(grouped)]
        return buckets, groups

    def _in_one_scan(
        self,
        connection: Connection,
        scope: ReportScope,
        start: ColumnElement[Any],
        parts: dict[str, tuple[Column[Any], int | None]],
    ) -> tuple[list[tuple[int, dict[str, int]]], dict[str, list[tuple[str, dict[str, int]]]]]:
        """Buckets and every part from one read of the range: GROUP BY GROUPING
        SETS, each result row told apart by GROUPING(), a bit per column (set
        when the column is not grouped in that row)."""
        columns = [start, *(column for column, _ in parts.values())]
        which = func.grouping(*columns).label("grouping")
        stmt = self._filtered(scope, *columns, which).group_by(
            func.grouping_sets(*(tuple_(column) for column in columns))
        )
        everything = (1 << len(columns)) - 1
        masks = {everything ^ (1 << (len(columns) - 1 - i)): i for i in range(len(columns))}
        found: list[list[Any]] = [[] for _ in columns]
        for row in connection.execute(stmt):
            index = masks[row.grouping]
            found[index].append((row[index], _sums(row)))
        buckets = sorted((int(begins), sums) for begins, sums in found[0])
        groups = {}
        for index, (part, (_, limit)) in enumerate(parts.items(), start=1):
            ranked = sorted(found[index], key=lambda item: (-item[1]["requests"], item[0]))
            groups[part] = ranked[:limit] if limit else ranked
        return buckets, groups
