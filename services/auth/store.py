"""The one place the auth service touches its database (SQLAlchemy, sync).

Calls block, so async callers run them in a worker thread.
"""

from __future__ import annotations

import time
from dataclasses import asdict

from sqlalchemy import JSON, Boolean, Integer, String, create_engine, event, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from services.auth.keys import KeyRecord, Limits


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


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


class KeyStore:
    def __init__(self, database_url: str) -> None:
        self.engine: Engine = create_engine(database_url, pool_pre_ping=True)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def create_schema(self) -> None:
        Base.metadata.create_all(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    def find_by_hash(self, secret_hash: str) -> KeyRecord | None:
        with self._sessions() as session:
            row = session.scalar(select(ApiKey).where(ApiKey.secret_hash == secret_hash))
            return row.to_record() if row else None

    def has_admin_key(self) -> bool:
        with self._sessions() as session:
            stmt = select(ApiKey.id).where(ApiKey.admin.is_(True), ApiKey.revoked.is_(False))
            return session.scalar(stmt.limit(1)) is not None

    def insert(self, record: KeyRecord, secret_hash: str) -> KeyRecord:
        with self._sessions.begin() as session:
            session.add(_row(record, secret_hash))
        return record

    def ensure_active_admin(self, record: KeyRecord, secret_hash: str) -> KeyRecord:
        """Insert the key, or make an existing key with this hash an active admin."""
        with self._sessions.begin() as session:
            row = session.scalar(select(ApiKey).where(ApiKey.secret_hash == secret_hash))
            if row is None:
                row = _row(record, secret_hash)
                session.add(row)
            else:
                row.admin, row.revoked, row.expires_at = True, False, None
            session.flush()
            return row.to_record()


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
