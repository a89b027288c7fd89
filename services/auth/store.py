"""The one place the auth service touches its database (SQLAlchemy, sync).

Calls block, so async callers run them in a worker thread. The schema is
managed by Alembic (services/auth/migrations); `migrate()` brings any database
up to date at start-up, so an upgrade never needs a wiped database.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    Index,
    Integer,
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
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.sql.expression import BindParameter, Executable

from services.auth.dependencies import database_dependency
from services.auth.keys import KeyRecord, Limits
from services.common import migrations

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "auth_alembic_version"


class Base(DeclarativeBase):
    pass


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    preview: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(200))
    team: Mapped[str] = mapped_column(String(200), default="")
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    models: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    limits: Mapped[dict[str, int | None]] = mapped_column(JSON, default=dict)
    expires_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[int] = mapped_column(Integer)
    last_used_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)

    def to_record(self) -> KeyRecord:
        return KeyRecord(
            id=self.id,
            name=self.name,
            team=self.team,
            preview=self.preview,
            admin=self.admin,
            models=tuple(self.models) if self.models is not None else None,
            limits=Limits(**(self.limits or {})),
            expires_at=self.expires_at,
            created_at=self.created_at,
            last_used_at=self.last_used_at,
            revoked=self.revoked,
        )


class TeamRow(Base):
    __tablename__ = "teams"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    limits: Mapped[dict[str, int | None]] = mapped_column(JSON, default=dict)


class UsageRow(Base):
    __tablename__ = "usage_records"
    # The usage report's ranges of one team or one key (migration 0005).
    __table_args__ = (
        Index("ix_usage_records_team_created_at", "team", "created_at"),
        Index("ix_usage_records_key_id_created_at", "key_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(128))  # the caller's: not unique
    # One row per admitted request, enforced here: a settle delivered twice (a
    # retry after a lost answer, on any replica) inserts nothing the second time.
    # NULL only in rows written before migration 0002.
    reservation_id: Mapped[str | None] = mapped_column(String(64), unique=True, index=True)
    key_id: Mapped[str] = mapped_column(String(32), index=True)
    team: Mapped[str] = mapped_column(String(200), index=True)
    model: Mapped[str] = mapped_column(String(200), index=True)
    input_tokens: Mapped[int] = mapped_column(Integer)
    output_tokens: Mapped[int] = mapped_column(Integer)
    latency_ms: Mapped[int] = mapped_column(Integer)
    ttft_ms: Mapped[int] = mapped_column(Integer)
    status: Mapped[int] = mapped_column(Integer)
    error_code: Mapped[str] = mapped_column(String(100))
    user: Mapped[str] = mapped_column(String(256))
    stream: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[float] = mapped_column(Float, index=True)
    # The batch this request was a line of; "" for a live request (migration 0003).
    batch_id: Mapped[str] = mapped_column(String(40), server_default="")
    route: Mapped[str] = mapped_column(String(64), server_default="")


USAGE_GROUPS = {
    "key": UsageRow.key_id,
    "model": UsageRow.model,
    "team": UsageRow.team,
    "route": UsageRow.route,
}


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
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.database = database_dependency()
        self._usage = Base.metadata.tables["usage_records"]
        self._insert_usage = _insert_skipping_known(self.engine.dialect.name, self._usage)
        keys = Base.metadata.tables["api_keys"]
        when: BindParameter[int] = bindparam("when")
        self._stamp_last_use = (
            update(keys)
            .where(keys.c.id == bindparam("key"))
            .where(or_(keys.c.last_used_at.is_(None), keys.c.last_used_at < when))
            .values(last_used_at=when)
        )

    @contextlib.contextmanager
    def _session(self, write: bool = False) -> Iterator[Session]:
        """A session (a transaction when `write`); the database's faults become
        UNAVAILABLE `DATABASE_UNAVAILABLE`, a commit's included."""
        sessions = self._sessions.begin() if write else self._sessions()
        with self.database.guard(), sessions as session:
            yield session

    def probe(self) -> None:
        with self._session() as session:
            session.execute(text("SELECT 1"))

    def migrate(self) -> None:
        migrations.migrate(self.engine, MIGRATIONS, VERSION_TABLE)

    def one_at_a_time(self, name: str) -> contextlib.AbstractContextManager[None]:
        """A lock across every process on this database (see migrations)."""
        return migrations.one_at_a_time(self.engine, name)

    def close(self) -> None:
        self.engine.dispose()

    # --- keys ---------------------------------------------------------------

    def find_by_hash(self, secret_hash: str) -> KeyRecord | None:
        with self._session() as session:
            row = session.scalar(select(ApiKey).where(ApiKey.secret_hash == secret_hash))
            return row.to_record() if row else None

    def get(self, key_id: str) -> KeyRecord | None:
        with self._session() as session:
            row = session.get(ApiKey, key_id)
            return row.to_record() if row else None

    def all_keys(self, team: str = "") -> list[KeyRecord]:
        """Every key newest first, or one team's ("": every team)."""
        stmt = select(ApiKey).order_by(ApiKey.created_at.desc(), ApiKey.id)
        if team:
            stmt = stmt.where(ApiKey.team == team)
        with self._session() as session:
            return [row.to_record() for row in session.scalars(stmt)]

    def has_admin_key(self) -> bool:
        with self._session() as session:
            stmt = select(ApiKey.id).where(ApiKey.admin.is_(True), ApiKey.revoked.is_(False))
            return session.scalar(stmt.limit(1)) is not None

    def insert(self, record: KeyRecord, secret_hash: str) -> KeyRecord:
        with self._session(write=True) as session:
            session.add(_row(record, secret_hash))
        return record

    def save(self, record: KeyRecord) -> KeyRecord | None:
        """Write every field but the secret hash; None if the key does not exist."""
        with self._session(write=True) as session:
            row = session.get(ApiKey, record.id)
            if row is None:
                return None
            row.name, row.team, row.admin = record.name, record.team, record.admin
            row.models = list(record.models) if record.models is not None else None
            row.limits = asdict(record.limits)
            row.expires_at, row.revoked = record.expires_at, record.revoked
            return row.to_record()

    def ensure_active_admin(self, record: KeyRecord, secret_hash: str) -> KeyRecord:
        """Insert the key, or make an existing key with this hash an active admin."""
        with self._session(write=True) as session:
            row = session.scalar(select(ApiKey).where(ApiKey.secret_hash == secret_hash))
            if row is None:
                row = _row(record, secret_hash)
                session.add(row)
            else:
                row.admin, row.revoked, row.expires_at = True, False, None
            session.flush()
            return row.to_record()

    # --- teams --------------------------------------------------------------

    def team_limits(self, team: str) -> Limits:
        with self._session() as session:
            row = session.get(TeamRow, team)
            return Limits(**row.limits) if row and row.limits else Limits()

    def set_team_limits(self, team: str, limits: Limits) -> Limits:
        with self._session(write=True) as session:
            row = session.get(TeamRow, team)
            if row is None:
                session.add(TeamRow(name=team, limits=asdict(limits)))
            else:
                row.limits = asdict(limits)
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
        # Core statements built once, on a plain connection: settles wait for
        # this transaction, and per-call statement building and the ORM
        # session's bookkeeping were most of its CPU.
        with self.database.guard(), self.engine.begin() as connection:
            if self._insert_usage is None:
                ids = [row["reservation_id"] for row in rows]
                known = self._usage.c.reservation_id.in_(ids)
                seen = set(connection.scalars(select(self._usage.c.reservation_id).where(known)))
                rows = [row for row in rows if row["reservation_id"] not in seen]
                if rows:
                    connection.execute(insert(self._usage), rows)
            else:
                connection.execute(self._insert_usage, rows)
            connection.execute(self._stamp_last_use, stamps)

    def usage_totals(self, filters: dict[str, Any], group_by: str | None) -> list[dict[str, Any]]:
        columns = [USAGE_GROUPS[group_by].label(group_by)] if group_by else []
        stmt = select(
            *columns,
            func.count().label("requests"),
            func.coalesce(func.sum(UsageRow.input_tokens), 0).label("input_tokens"),
            func.coalesce(func.sum(UsageRow.output_tokens), 0).label("output_tokens"),
            func.coalesce(func.sum((UsageRow.status >= 400).cast(Integer)), 0).label("errors"),
        )
        for name, column in (
            ("key_id", UsageRow.key_id),
            ("team", UsageRow.team),
            ("model", UsageRow.model),
            ("batch_id", UsageRow.batch_id),
        ):
            if filters.get(name):
                stmt = stmt.where(column == filters[name])
        if filters.get("since") is not None:
            stmt = stmt.where(UsageRow.created_at >= filters["since"])
        if filters.get("until") is not None:
            stmt = stmt.where(UsageRow.created_at < filters["until"])
        if group_by:
            stmt = stmt.group_by(USAGE_GROUPS[group_by]).order_by(USAGE_GROUPS[group_by])
        with self._session() as session:
            return [dict(row._mapping) for row in session.execute(stmt)]

    def purge_usage(self, older_than: float) -> int:
        with self._session(write=True) as session:
            result = session.execute(delete(UsageRow).where(UsageRow.created_at < older_than))
            return int(getattr(result, "rowcount", 0) or 0)


def _row(record: KeyRecord, secret_hash: str) -> ApiKey:
    return ApiKey(
        id=record.id,
        secret_hash=secret_hash,
        preview=record.preview,
        name=record.name,
        team=record.team,
        admin=record.admin,
        models=list(record.models) if record.models is not None else None,
        limits=asdict(record.limits),
        expires_at=record.expires_at,
        created_at=record.created_at or int(time.time()),
        revoked=record.revoked,
    )


__all__ = ["Base", "KeyStore", "Session", "replace"]
