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
    Column,
    ColumnElement,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
)
from sqlalchemy.engine import Connection, Engine, RowMapping

from services.common import migrations
from services.files.records import FileRecord, KeptResponse

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "files_alembic_version"
# The revision whose schema `create_all` used to make, for databases from before Alembic.
BASELINE = "0001"

# SQLAlchemy Core tables, not ORM classes: the ORM was 6 MiB of the idle process
# for a handful of one-table statements.
metadata = MetaData()

FILES = Table(
    "files",
    metadata,
    # Insertion order: listings page by it, so files created in the same second
    # still come back in the order they were made.
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(40), nullable=False, unique=True, index=True),
    Column("team", String(200), nullable=False, index=True),
    Column("filename", String(255), nullable=False),
    Column("purpose", String(32), nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("content_type", String(255), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=True, index=True),
)

# Kept Responses API answers; the JSON texts are the edge's, kept as sent.
RESPONSES = Table(
    "stored_responses",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("team", String(200), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False, index=True),
    Column("response_json", Text, nullable=False),
    Column("input_items_json", Text, nullable=False),
    Column("conversation_json", Text, nullable=False),
)


def _file_record(row: RowMapping) -> FileRecord:
    return FileRecord(
        id=row["id"],
        team=row["team"],
        filename=row["filename"],
        purpose=row["purpose"],
        bytes=row["bytes"],
        created_at=row["created_at"],
        content_type=row["content_type"],
        expires_at=row["expires_at"],
    )


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def _unexpired(now: int) -> ColumnElement[bool]:
    return (FILES.c.expires_at.is_(None)) | (FILES.c.expires_at > now)


def _live(team: str, now: int) -> list[ColumnElement[bool]]:
    """A team's files that have not expired."""
    return [FILES.c.team == team, _unexpired(now)]


class FileStore:
    def __init__(self, database_url: str) -> None:
        self.engine: Engine = create_engine(database_url, pool_pre_ping=True)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)

    def migrate(self) -> None:
        migrations.migrate(self.engine, MIGRATIONS, VERSION_TABLE, adopt=(FILES.name, BASELINE))

    def close(self) -> None:
        self.engine.dispose()

    def team_usage(self, team: str, now: int) -> int:
        with self.engine.connect() as connection:
            return _usage(connection, team, now)

    def usage_by_team(self, now: int) -> list[tuple[str, int]]:
        """Live bytes per team, largest first."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(FILES.c.team, func.sum(FILES.c.bytes))
                .where(_unexpired(now))
                .group_by(FILES.c.team)
                .order_by(func.sum(FILES.c.bytes).desc())
            )
            return [(team, int(total or 0)) for team, total in rows]

    def insert_if_fits(self, record: FileRecord, quota_bytes: int) -> tuple[bool, int]:
        """Insert unless the team's live files plus this one exceed `quota_bytes`
        (0: no quota). Answers whether it was inserted and the usage before."""
        with self.engine.begin() as connection:
            usage = _usage(connection, record.team, record.created_at) if quota_bytes else 0
            if quota_bytes and usage + record.bytes > quota_bytes:
                return False, usage
            connection.execute(insert(FILES).values(dataclasses.asdict(record)))
        return True, usage

    def get(self, team: str, file_id: str, now: int) -> FileRecord | None:
        with self.engine.connect() as connection:
            row = _live_file(connection, team, file_id, now)
        return _file_record(row) if row else None

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
        with self.engine.connect() as connection:
            statement = select(FILES).where(*_live(team, now))
            if purpose:
                statement = statement.where(FILES.c.purpose == purpose)
            if after:
                cursor = connection.scalar(
                    select(FILES.c.seq).where(FILES.c.team == team, FILES.c.id == after)
                )
                if cursor is None:
                    return None
                statement = statement.where(
                    FILES.c.seq > cursor if ascending else FILES.c.seq < cursor
                )
            order = FILES.c.seq.asc() if ascending else FILES.c.seq.desc()
            rows = list(connection.execute(statement.order_by(order).limit(limit + 1)).mappings())
        return [_file_record(row) for row in rows[:limit]], len(rows) > limit

    def delete(self, team: str, file_id: str, now: int) -> FileRecord | None:
        with self.engine.begin() as connection:
            row = _live_file(connection, team, file_id, now)
            if row is None:
                return None
            connection.execute(delete(FILES).where(FILES.c.seq == row["seq"]))
        return _file_record(row)

    def expired(self, now: int, limit: int) -> list[FileRecord]:
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(FILES)
                .where(FILES.c.expires_at.is_not(None), FILES.c.expires_at <= now)
                .limit(limit)
            ).mappings()
            return [_file_record(row) for row in rows]

    def remove(self, file_id: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(delete(FILES).where(FILES.c.id == file_id))

    # --- kept Responses API answers --------------------------------------------

    def put_response(self, record: KeptResponse) -> bool:
        """Insert; False when the id is already kept."""
        with self.engine.begin() as connection:
            if connection.scalar(select(RESPONSES.c.id).where(RESPONSES.c.id == record.id)):
                return False
            connection.execute(insert(RESPONSES).values(dataclasses.asdict(record)))
        return True

    def get_response(self, team: str, response_id: str, now: int) -> KeptResponse | None:
        with self.engine.connect() as connection:
            row = (
                connection.execute(select(RESPONSES).where(RESPONSES.c.id == response_id))
                .mappings()
                .first()
            )
        if row is None or row["team"] != team or row["expires_at"] <= now:
            return None
        return KeptResponse(**row)

    def delete_response(self, team: str, response_id: str, now: int) -> bool:
        with self.engine.begin() as connection:
            result = connection.execute(
                delete(RESPONSES).where(
                    RESPONSES.c.id == response_id,
                    RESPONSES.c.team == team,
                    RESPONSES.c.expires_at > now,
                )
            )
            return bool(result.rowcount)

    def purge_responses(self, now: int) -> int:
        with self.engine.begin() as connection:
            result = connection.execute(delete(RESPONSES).where(RESPONSES.c.expires_at <= now))
            return int(result.rowcount)


def _live_file(connection: Connection, team: str, file_id: str, now: int) -> RowMapping | None:
    statement = select(FILES).where(*_live(team, now), FILES.c.id == file_id)
    return connection.execute(statement).mappings().first()


def _usage(connection: Connection, team: str, now: int) -> int:
    total = connection.scalar(
        select(func.coalesce(func.sum(FILES.c.bytes), 0)).where(*_live(team, now))
    )
    return int(total or 0)
