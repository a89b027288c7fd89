"""The one place the files service touches its database (SQLAlchemy, sync).

Only metadata lives here; the bytes are in a BlobStore. Calls block, so async
callers run them in a worker thread. The schema is managed by Alembic
(services/files/migrations, version table `files_alembic_version`); `migrate()`
brings any database up to date at start-up, including one whose `files` table
was made by `create_all` before there were migrations.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from sqlalchemy import (
    BigInteger,
    Integer,
    String,
    Text,
    create_engine,
    delete,
    event,
    func,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.sql import Select

from services.common import migrations
from services.files.records import FileRecord, KeptResponse

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "files_alembic_version"
# The revision whose schema `create_all` used to make, for databases from before Alembic.
BASELINE = "0001"


class Base(DeclarativeBase):
    pass


class StoredFile(Base):
    __tablename__ = "files"

    # Insertion order: listings page by it, so files created in the same second
    # still come back in the order they were made.
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True, index=True)
    team: Mapped[str] = mapped_column(String(200), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)
    content_type: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True, index=True)

    def to_record(self) -> FileRecord:
        return FileRecord(
            id=self.id,
            team=self.team,
            filename=self.filename,
            purpose=self.purpose,
            bytes=self.bytes,
            created_at=self.created_at,
            content_type=self.content_type,
            expires_at=self.expires_at,
        )


class StoredResponse(Base):
    """A kept Responses API answer; the JSON texts are the edge's, kept as sent."""

    __tablename__ = "stored_responses"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    team: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int] = mapped_column(BigInteger, index=True)
    response_json: Mapped[str] = mapped_column(Text)
    input_items_json: Mapped[str] = mapped_column(Text)
    conversation_json: Mapped[str] = mapped_column(Text)

    def to_record(self) -> KeptResponse:
        return KeptResponse(
            id=self.id,
            team=self.team,
            created_at=self.created_at,
            expires_at=self.expires_at,
            response_json=self.response_json,
            input_items_json=self.input_items_json,
            conversation_json=self.conversation_json,
        )


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def _live(statement: Select[StoredFile], team: str, now: int) -> Select[StoredFile]:
    return statement.where(
        StoredFile.team == team,
        (StoredFile.expires_at.is_(None)) | (StoredFile.expires_at > now),
    )


class FileStore:
    def __init__(self, database_url: str) -> None:
        self.engine: Engine = create_engine(database_url, pool_pre_ping=True)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def migrate(self) -> None:
        migrations.migrate(
            self.engine, MIGRATIONS, VERSION_TABLE, adopt=(StoredFile.__tablename__, BASELINE)
        )

    def close(self) -> None:
        self.engine.dispose()

    def team_usage(self, team: str, now: int) -> int:
        with self._sessions() as session:
            return _usage(session, team, now)

    def usage_by_team(self, now: int) -> list[tuple[str, int]]:
        """Live bytes per team, largest first."""
        with self._sessions() as session:
            rows = session.execute(
                select(StoredFile.team, func.sum(StoredFile.bytes))
                .where((StoredFile.expires_at.is_(None)) | (StoredFile.expires_at > now))
                .group_by(StoredFile.team)
                .order_by(func.sum(StoredFile.bytes).desc())
            )
            return [(team, int(total or 0)) for team, total in rows]

    def insert_if_fits(self, record: FileRecord, quota_bytes: int) -> tuple[bool, int]:
        """Insert unless the team's live files plus this one exceed `quota_bytes`
        (0: no quota). Answers whether it was inserted and the usage before."""
        with self._sessions.begin() as session:
            usage = _usage(session, record.team, record.created_at) if quota_bytes else 0
            if quota_bytes and usage + record.bytes > quota_bytes:
                return False, usage
            session.add(_row(record))
        return True, usage

    def get(self, team: str, file_id: str, now: int) -> FileRecord | None:
        with self._sessions() as session:
            row = session.scalar(
                _live(select(StoredFile), team, now).where(StoredFile.id == file_id)
            )
            return row.to_record() if row else None

    def page(
        self,
        team: str,
        now: int,
        *,
        purpose: str | None,
        limit: int,
        after: str | None,
        ascending: bool,
    ) -> tuple[list[FileRecord], bool] | None:
        """One page and whether more follow; None when `after` is no file of the team."""
        with self._sessions() as session:
            statement = _live(select(StoredFile), team, now)
            if purpose:
                statement = statement.where(StoredFile.purpose == purpose)
            if after:
                cursor = session.scalar(
                    select(StoredFile.seq).where(StoredFile.team == team, StoredFile.id == after)
                )
                if cursor is None:
                    return None
                statement = statement.where(
                    StoredFile.seq > cursor if ascending else StoredFile.seq < cursor
                )
            order = StoredFile.seq.asc() if ascending else StoredFile.seq.desc()
            rows = list(session.scalars(statement.order_by(order).limit(limit + 1)))
        return [row.to_record() for row in rows[:limit]], len(rows) > limit

    def delete(self, team: str, file_id: str, now: int) -> FileRecord | None:
        with self._sessions.begin() as session:
            row = session.scalar(
                _live(select(StoredFile), team, now).where(StoredFile.id == file_id)
            )
            if row is None:
                return None
            session.delete(row)
            return row.to_record()

    def expired(self, now: int, limit: int) -> list[FileRecord]:
        with self._sessions() as session:
            rows = session.scalars(
                select(StoredFile)
                .where(StoredFile.expires_at.is_not(None), StoredFile.expires_at <= now)
                .limit(limit)
            )
            return [row.to_record() for row in rows]

    def remove(self, file_id: str) -> None:
        with self._sessions.begin() as session:
            row = session.scalar(select(StoredFile).where(StoredFile.id == file_id))
            if row is not None:
                session.delete(row)

    # --- kept Responses API answers --------------------------------------------

    def put_response(self, record: KeptResponse) -> bool:
        """Insert; False when the id is already kept."""
        with self._sessions.begin() as session:
            if session.get(StoredResponse, record.id) is not None:
                return False
            session.add(StoredResponse(**dataclasses.asdict(record)))
        return True

    def get_response(self, team: str, response_id: str, now: int) -> KeptResponse | None:
        with self._sessions() as session:
            row = session.get(StoredResponse, response_id)
            if row is None or row.team != team or row.expires_at <= now:
                return None
            return row.to_record()

    def delete_response(self, team: str, response_id: str, now: int) -> bool:
        with self._sessions.begin() as session:
            result = session.execute(
                delete(StoredResponse).where(
                    StoredResponse.id == response_id,
                    StoredResponse.team == team,
                    StoredResponse.expires_at > now,
                )
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def purge_responses(self, now: int) -> int:
        with self._sessions.begin() as session:
            result = session.execute(delete(StoredResponse).where(StoredResponse.expires_at <= now))
            return int(result.rowcount)  # type: ignore[attr-defined]


def _usage(session: Session, team: str, now: int) -> int:
    total = session.scalar(
        select(func.coalesce(func.sum(StoredFile.bytes), 0)).where(
            StoredFile.team == team,
            (StoredFile.expires_at.is_(None)) | (StoredFile.expires_at > now),
        )
    )
    return int(total or 0)


def _row(record: FileRecord) -> StoredFile:
    return StoredFile(
        id=record.id,
        team=record.team,
        filename=record.filename,
        purpose=record.purpose,
        bytes=record.bytes,
        content_type=record.content_type,
        created_at=record.created_at,
        expires_at=record.expires_at,
    )
