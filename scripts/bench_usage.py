"""Time the usage dashboard's queries on a ledger of a million rows (issue #16).

    .venv/bin/python -m scripts.bench_usage                        # fresh PostgreSQL database
    .venv/bin/python -m scripts.bench_usage --url sqlite:////tmp/usage.db
    .venv/bin/python -m scripts.bench_usage --rows 200000 --runs 3

A benchmark, not a test: it makes a database (PostgreSQL: a new database on
127.0.0.1:5432, dropped afterwards; SQLite: the file named, which must not
exist), migrates it, fills `usage_records` inside the database (generate_series
or a recursive CTE: no rows travel from Python) with rows spread evenly over the
last 30 days and written in time order, as the ledger is (500 keys in 50 teams,
10 models, 20 users, routes and failures mixed), then runs each report the
dashboard asks for `--runs` times and prints the median and the slowest, in
milliseconds. Numbers depend on the machine and on
what else runs on it.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy

from services.auth.store import KeyStore
from services.auth.usage_report import ReportScope, UsageReports
from tests.services_available import fresh_postgres_database

DAYS = 30

# One expression per column, over a row number `n` and a random number `r`.
COLUMNS = """
    'bench-' || n,
    'res-' || n,
    'key_' || (n % 500),
    'team-' || (n % 500 % 50),
    'model-' || (n % 10),
    50 + n % 700,
    CASE WHEN n % 10 = 9 THEN 0 ELSE n % 400 END,
    20 + n % 3000,
    CASE WHEN n % 10 = 9 THEN 0 ELSE 5 + n % 500 END,
    CASE WHEN n % 50 = 0 THEN 429 WHEN n % 97 = 0 THEN 502 ELSE 200 END,
    '',
    'user-' || (n % 20),
    {stream},
    {now} - {span} + (n - r) * {span} / {rows},
    '',
    CASE WHEN n % 10 = 9 THEN '/v1/embeddings' ELSE '/v1/chat/completions' END
"""
TARGET = (
    "usage_records (request_id, reservation_id, key_id, team, model, input_tokens,"
    ' output_tokens, latency_ms, ttft_ms, status, error_code, "user", stream, created_at,'
    " batch_id, route)"
)


@contextmanager
def database(url: str | None) -> Iterator[str]:
    """`url`, or a new PostgreSQL database dropped afterwards."""
    if url:
        yield url
        return
    with fresh_postgres_database() as fresh:
        yield fresh


def fill(store: KeyStore, rows: int, now: float) -> None:
    span = DAYS * 86400
    if store.engine.dialect.name == "postgresql":
        values = COLUMNS.format(stream="n % 2 = 0", now=now, span=span, rows=rows)
        sql = (
            f"INSERT INTO {TARGET} SELECT {values} FROM"
            f" (SELECT n, random() AS r FROM generate_series(1, {rows}) AS n) AS s"
        )
    else:
        values = COLUMNS.format(stream="n % 2", now=now, span=span, rows=rows)
        sql = (
            f"WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < {rows})"
            f" INSERT INTO {TARGET} SELECT {values} FROM"
            " (SELECT n, (abs(random()) % 1000000) / 1000000.0 AS r FROM c)"
        )
    with store.engine.begin() as connection:
        connection.execute(sqlalchemy.text(sql))
    with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(sqlalchemy.text("ANALYZE"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a SQLAlchemy URL (default: a fresh PostgreSQL database)")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    options = parser.parse_args()
    now = time.time()
    with database(options.url) as url:
        store = KeyStore(url)
        store.migrate()
        started = time.perf_counter()
        fill(store, options.rows, now)
        print(
            f"{store.engine.dialect.name}: {options.rows:,} ledger rows over {DAYS} days"
            f" written in {time.perf_counter() - started:.1f} s"
        )
        reports = UsageReports(store)
        cases = [
            ("every team, last hour, per minute", 3600, "minute", "", ""),
            ("every team, last day, per hour", 86400, "hour", "", ""),
            ("every team, last week, per day", 7 * 86400, "day", "", ""),
            ("every team, last 30 days, per day", DAYS * 86400, "day", "", ""),
            ("one team, last week, per hour", 7 * 86400, "hour", "team-7", ""),
            ("one team, last 30 days, per day", DAYS * 86400, "day", "team-7", ""),
            ("one key (+ users), last week, per hour", 7 * 86400, "hour", "team-7", "key_7"),
        ]
        print(f"{'report':<42} {'rows':>9} {'median ms':>10} {'max ms':>8}")
        for label, span, bucket, team, key_id in cases:
            scope = ReportScope(
                since=now - span, until=now, bucket=bucket, team=team, key_id=key_id
            )
            times, report = [], None
            for _ in range(options.runs):
                began = time.perf_counter()
                report = reports.report(scope)
                times.append((time.perf_counter() - began) * 1000)
            assert report is not None
            print(
                f"{label:<42} {report.summary.requests:>9,} {statistics.median(times):>10.1f}"
                f" {max(times):>8.1f}"
            )
        store.close()


if __name__ == "__main__":
    main()
