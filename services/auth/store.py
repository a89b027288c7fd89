"""The one place the auth service touches its database (SQLAlchemy, sync).

Calls block, so async callers run them in a worker thread. The schema is
managed by Alembic (services/auth/migrations); `migrate()` brings any database
up to date at start-up, so an upgrade never needs a wiped database.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection, Engine, RowMapping, make_url
from sqlalchemy.sql.expression import BindParameter, Executable

from services.auth.dependencies import database_dependency
from services.auth.keys import KeyRecord, Limits
from services.common import migrations

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "auth_alembic_version"

# SQLAlchemy Core tables, not ORM classes: the ORM was 6 MiB of the idle process
# for a handful of one-table statements.
metadata = MetaData()

API_KEYS = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("secret_hash", String(64), nullable=False, unique=True, index=True),
    Column("preview", String(32), nullable=False),
    Column("name", String(200), nullable=False),
    Column("team", String(200), nullable=False, default=""),
    Column("admin", Boolean, nullable=False, default=False),
    Column("models", JSON, nullable=True),
    Column("limits", JSON, nullable=False, default=dict),
    Column("expires_at", Integer, nullable=True),
    Column("created_at", Integer, nullable=False),
    Column("last_used_at", Integer, nullable=True),
    Column("revoked", Boolean, nullable=False, default=False),
)

TEAMS = Table(
    "teams",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("limits", JSON, nullable=False, default=dict),
)

USAGE = Table(
    "usage_records",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(128), nullable=False),  # the caller's: not unique
    # One row per admitted request, enforced here: a settle delivered twice (a
    # retry after a lost answer, on any replica) inserts nothing the second time.
    # NULL only in rows written before migration 0002.
    Column("reservation_id", String(64), nullable=True, unique=True, index=True),
    Column("key_id", String(32), nullable=False, index=True),
    Column("team", String(200), nullable=False, index=True),
    Column("model", String(200), nullable=False, index=True),
    Column("input_tokens", Integer, nullable=False),
    Column("output_tokens", Integer, nullable=False),
    Column("latency_ms", Integer, nullable=False),
    Column("ttft_ms", Integer, nullable=False),
    Column("status", Integer, nullable=False),
    Column("error_code", String(100), nullable=False),
    Column("user", String(256), nullable=False),
    Column("stream", Boolean, nullable=False),
    Column("created_at", Float, nullable=False, index=True),
    # The batch this request was a line of; "" for a live request (migration 0003).
    Column("batch_id", String(40), nullable=False, server_default=""),
    Column("route", String(64), nullable=False, server_default=""),
    # The usage report's ranges of one team or one key (migration 0005).
    Index("ix_usage_records_team_created_at", "team", "created_at"),
    Index("ix_usage_records_key_id_created_at", "key_id", "created_at"),
)

USAGE_GROUPS = {
    "key": USAGE.c.key_id,
    "model": USAGE.c.model,
    "team": USAGE.c.team,
    "route": USAGE.c.route,
}


def _key_record(row: RowMapping | dict[str, Any]) -> KeyRecord:
    models = row["models"]
    return KeyRecord(
        id=row["id"],
        name=row["name"],
        team=row["team"],
        preview=row["preview"],
        admin=row["admin"],
        models=tuple(models) if models is not None else None,
        limits=Limits(**(row["limits"] or {})),
        expires_at=row["expires_at"],
        created_at=row["created_at"],
        last_used_at=row["last_used_at"],
        revoked=row["revoked"],
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: object) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # In WAL mode NORMAL syncs at checkpoints, not at each commit: a commit
    # survives the process being killed (it is in the WAL file), while a power
    # loss may roll back the last ones. Five times the commits per second, and
    # settles wait for their commit. (PostgreSQL: its own fsync per commit.)
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def _insert_skipping_known(dialect: str, table: Table) -> Executable | None:
    """INSERT … ON CONFLICT (reservation_id) DO NOTHING, where the dialect has it.
    Each dialect's module is imported only for its own database (PostgreSQL's: 2 MiB)."""
    if dialect == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(table).on_conflict_do_nothing(index_elements=["reservation_id"])
    if dialect == "sqlite":
        from sqlalchemy.dialects import sqlite

        return sqlite.insert(table).on_conflict_do_nothing(index_elements=["reservation_id"])
    return None  # the caller leaves out known rows (the unique index still guards a race)


class KeyStore:
    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        # A network database's pooled connections can die with its server: ping
        # each on checkout, so the first request after a restart does not fail.
        # A SQLite file has no server, and a ping is a statement per transaction.
        backend = make_url(database_url).get_backend_name()
        self.engine: Engine = create_engine(database_url, pool_pre_ping=backend != "sqlite")
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self.database = database_dependency()
        self._insert_usage = _insert_skipping_known(self.engine.dialect.name, USAGE)
        when: BindParameter[int] = bindparam("when")
        self._stamp_last_use = (
            update(API_KEYS)
            .where(API_KEYS.c.id == bindparam("key"))
            .where(or_(API_KEYS.c.last_used_at.is_(None), API_KEYS.c.last_used_at < when))
            .values(last_used_at=when)
        )

    @contextlib.contextmanager
    def _connection(self, write: bool = False) -> Iterator[Connection]:
        """A connection (in a transaction committed at the end when `write`); the
        database's faults become UNAVAILABLE `DATABASE_UNAVAILABLE`, a commit's included."""
        connection = self.engine.begin() if write else self.engine.connect()
        with self.database.guard(), connection as opened:
            yield opened

    def probe(self) -> None:
        with self._connection() as connection:
            connection.execute(text("SELECT 1"))

    def migrate(self) -> None:
        migrations.migrate(self.engine, MIGRATIONS, VERSION_TABLE)

    def one_at_a_time(self, name: str) -> contextlib.AbstractContextManager[None]:
        """A lock across every process on this database (see migrations)."""
        return migrations.one_at_a_time(self.engine, name)

    def close(self) -> None:
        self.engine.dispose()

    # --- keys ---------------------------------------------------------------

    def find_by_hash(self, secret_hash: str) -> KeyRecord | None:
        stmt = select(API_KEYS).where(API_KEYS.c.secret_hash == secret_hash)
        with self._connection() as connection:
            row = connection.execute(stmt).mappings().first()
        return _key_record(row) if row else None

    def get(self, key_id: str) -> KeyRecord | None:
        with self._connection() as connection:
            row = _key_row(connection, key_id)
        return _key_record(row) if row else None

    def all_keys(self, team: str = "") -> list[KeyRecord]:
        """Every key newest first, or one team's ("": every team)."""
        stmt = select(API_KEYS).order_by(API_KEYS.c.created_at.desc(), API_KEYS.c.id)
        if team:
            stmt = stmt.where(API_KEYS.c.team == team)
        with self._connection() as connection:
            return [_key_record(row) for row in connection.execute(stmt).mappings()]

    def has_admin_key(self) -> bool:
        stmt = select(API_KEYS.c.id).where(
            API_KEYS.c.admin.is_(True), API_KEYS.c.revoked.is_(False)
        )
        with self._connection() as connection:
            return connection.scalar(stmt.limit(1)) is not None

    def insert(self, record: KeyRecord, secret_hash: str) -> KeyRecord:
        with self._connection(write=True) as connection:
            connection.execute(insert(API_KEYS).values(_key_values(record, secret_hash)))
        return record

    def save(self, record: KeyRecord) -> KeyRecord | None:
        """Write every field but the secret hash; None if the key does not exist."""
        with self._connection(write=True) as connection:
            changed = connection.execute(
                update(API_KEYS)
                .where(API_KEYS.c.id == record.id)
                .values(
                    name=record.name,
                    team=record.team,
                    admin=record.admin,
                    models=list(record.models) if record.models is not None else None,
                    limits=asdict(record.limits),
                    expires_at=record.expires_at,
                    revoked=record.revoked,
                )
            )
            if not changed.rowcount:
                return None
            row = _key_row(connection, record.id)
        return _key_record(row) if row else None

    def ensure_active_admin(self, record: KeyRecord, secret_hash: str) -> KeyRecord:
        """Insert the key, or make an existing key with this hash an active admin."""
        with self._connection(write=True) as connection:
            row = (
                connection.execute(select(API_KEYS).where(API_KEYS.c.secret_hash == secret_hash))
                .mappings()
                .first()
            )
            if row is None:
                values = _key_values(record, secret_hash)
                connection.execute(insert(API_KEYS).values(values))
                return _key_record({**values, "last_used_at": None})
            active = {"admin": True, "revoked": False, "expires_at": None}
            connection.execute(update(API_KEYS).where(API_KEYS.c.id == row["id"]).values(active))
            return _key_record({**row, **active})

    # --- teams --------------------------------------------------------------

    def team_limits(self, team: str) -> Limits:
        with self._connection() as connection:
            limits = connection.scalar(select(TEAMS.c.limits).where(TEAMS.c.name == team))
        return Limits(**limits) if limits else Limits()

    def set_team_limits(self, team: str, limits: Limits) -> Limits:
        with self._connection(write=True) as connection:
            changed = connection.execute(
                update(TEAMS).where(TEAMS.c.name == team).values(limits=asdict(limits))
            )
            if not changed.rowcount:
                connection.execute(insert(TEAMS).values(name=team, limits=asdict(limits)))
        return limits

    # --- usage --------------------------------------------------------------

    def add_usage(self, rows: list[dict[str, Any]]) -> None:
        """Insert ledger rows and stamp their keys' last use, in one transaction.
        A row whose reservation is already in the ledger is skipped (idempotent)."""
        if not rows:
            return
        # One order on every replica: two transactions inserting the same
        # reservations (a retried settle) wait for each other, never deadlock.
        rows = sorted(rows, key=lambda row: row["reservation_id"])
        last_use: dict[str, int] = {}
        for row in rows:
            last_use[row["key_id"]] = max(last_use.get(row["key_id"], 0), int(row["created_at"]))
        stamps = [{"key": key_id, "when": when} for key_id, when in sorted(last_use.items())]
        # Statements built once: settles wait for this transaction, and per-call
        # statement building was most of its CPU.
        with self._connection(write=True) as connection:
            if self._insert_usage is None:
                ids = [row["reservation_id"] for row in rows]
                known = USAGE.c.reservation_id.in_(ids)
                seen = set(connection.scalars(select(USAGE.c.reservation_id).where(known)))
                rows = [row for row in rows if row["reservation_id"] not in seen]
                if rows:
                    connection.execute(insert(USAGE), rows)
            else:
                connection.execute(self._insert_usage, rows)
            connection.execute(self._stamp_last_use, stamps)

    def usage_totals(self, filters: dict[str, Any], group_by: str | None) -> list[dict[str, Any]]:
        columns = [USAGE_GROUPS[group_by].label(group_by)] if group_by else []
        stmt = select(
            *columns,
            func.count().label("requests"),
            func.coalesce(func.sum(USAGE.c.input_tokens), 0).label("input_tokens"),
            func.coalesce(func.sum(USAGE.c.output_tokens), 0).label("output_tokens"),
            func.coalesce(func.sum((USAGE.c.status >= 400).cast(Integer)), 0).label("errors"),
        )
        for name in ("key_id", "team", "model", "batch_id"):
            if filters.get(name):
                stmt = stmt.where(USAGE.c[name] == filters[name])
        if filters.get("since") is not None:
            stmt = stmt.where(USAGE.c.created_at >= filters["since"])
        if filters.get("until") is not None:
            stmt = stmt.where(USAGE.c.created_at < filters["until"])
        if group_by:
            stmt = stmt.group_by(USAGE_GROUPS[group_by]).order_by(USAGE_GROUPS[group_by])
        with self._connection() as connection:
            return [dict(row) for row in connection.execute(stmt).mappings()]

    def purge_usage(self, older_than: float) -> int:
        with self._connection(write=True) as connection:
            result = connection.execute(delete(USAGE).where(USAGE.c.created_at < older_than))
            return int(result.rowcount or 0)


def _key_row(connection: Connection, key_id: str) -> RowMapping | None:
    return connection.execute(select(API_KEYS).where(API_KEYS.c.id == key_id)).mappings().first()


def _key_values(record: KeyRecord, secret_hash: str) -> dict[str, Any]:
    return {
        "id": record.id,
        "secret_hash": secret_hash,
        "preview": record.preview,
        "name": record.name,
        "team": record.team,
        "admin": record.admin,
        "models": list(record.models) if record.models is not None else None,
        "limits": asdict(record.limits),
        "expires_at": record.expires_at,
        "created_at": record.created_at or int(time.time()),
        "revoked": record.revoked,
    }
