"""The batch tables: one row per batch, one per finished line, one per line
started (SQLAlchemy, sync).

Same engine and Alembic history as the file metadata (services/files/store.py).
A worker's lease is a compare-and-set on the batch row (owner, until), which
works alike on SQLite and PostgreSQL: two workers never hold one batch. Line
results are keyed by (batch, line index), so recording a line twice keeps the
first result and a resumed batch can ask which lines are done. A line is
marked started before its request goes out; started without a result means
its worker stopped while it ran, and it is not run again.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import fields

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine, RowMapping

from services.files.batch_records import ACTIVE, BatchError, BatchRecord, LineResult
from services.files.store import FileStore

# Apart from the files' metadata, whose `create_all` stands for revision 0001.
batch_metadata = MetaData()

BATCHES = Table(
    "batches",
    batch_metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(40), nullable=False, unique=True, index=True),
    Column("team", String(200), nullable=False, index=True),
    Column("key_id", String(64), nullable=False),
    Column("endpoint", String(64), nullable=False),
    Column("input_file_id", String(40), nullable=False),
    Column("completion_window", String(16), nullable=False),
    Column("status", String(16), nullable=False, index=True),
    Column("output_file_id", String(40), nullable=False, default=""),
    Column("error_file_id", String(40), nullable=False, default=""),
    Column("errors", Text, nullable=False, default="[]"),  # JSON list of BatchError
    Column("metadata_json", Text, nullable=False, default="{}"),
    Column("total", Integer, nullable=False, default=0),
    Column("completed", Integer, nullable=False, default=0),
    Column("failed", Integer, nullable=False, default=0),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("in_progress_at", BigInteger, nullable=False, default=0),
    Column("finalizing_at", BigInteger, nullable=False, default=0),
    Column("completed_at", BigInteger, nullable=False, default=0),
    Column("failed_at", BigInteger, nullable=False, default=0),
    Column("expired_at", BigInteger, nullable=False, default=0),
    Column("cancelling_at", BigInteger, nullable=False, default=0),
    Column("cancelled_at", BigInteger, nullable=False, default=0),
    Column("lease_owner", String(64), nullable=False, default=""),
    Column("lease_until", Float, nullable=False, default=0.0),
    Column("model", String(200), nullable=False, default="", server_default=""),
    Column("input_tokens", BigInteger, nullable=False, default=0, server_default="0"),
    Column("output_tokens", BigInteger, nullable=False, default=0, server_default="0"),
)

LINES = Table(
    "batch_lines",
    batch_metadata,
    Column("batch_id", String(40), primary_key=True),
    Column("idx", Integer, primary_key=True),
    Column("custom_id", Text, nullable=False),
    Column("ok", Boolean, nullable=False),
    Column("line", LargeBinary, nullable=False),
    Column("input_tokens", BigInteger, nullable=False, default=0, server_default="0"),
    Column("output_tokens", BigInteger, nullable=False, default=0, server_default="0"),
)

# Lines whose request was about to go out (their result may never come).
LINE_STARTS = Table(
    "batch_line_starts",
    batch_metadata,
    Column("batch_id", String(40), primary_key=True),
    Column("idx", Integer, primary_key=True),
)

# BatchRecord's fields that are columns as they are.
_PLAIN = tuple(f.name for f in fields(BatchRecord) if f.name not in ("errors", "metadata"))


def _record(row: RowMapping) -> BatchRecord:
    return BatchRecord(
        **{name: row[name] for name in _PLAIN},
        errors=tuple(BatchError(**e) for e in json.loads(row["errors"])),
        metadata=json.loads(row["metadata_json"]),
    )


def _batch(connection: Connection, batch_id: str) -> BatchRecord | None:
    row = connection.execute(select(BATCHES).where(BATCHES.c.id == batch_id)).mappings().first()
    return _record(row) if row else None


class BatchStore:
    def __init__(self, files: FileStore) -> None:
        self.engine: Engine = files.engine

    def insert(self, record: BatchRecord) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                insert(BATCHES).values(
                    id=record.id,
                    team=record.team,
                    key_id=record.key_id,
                    endpoint=record.endpoint,
                    input_file_id=record.input_file_id,
                    completion_window=record.completion_window,
                    status=record.status,
                    metadata_json=json.dumps(record.metadata),
                    created_at=record.created_at,
                    expires_at=record.expires_at,
                )  # every other column starts at its default ("", 0, "[]")
            )

    def get(self, batch_id: str, team: str | None = None) -> BatchRecord | None:
        statement = select(BATCHES).where(BATCHES.c.id == batch_id)
        if team is not None:
            statement = statement.where(BATCHES.c.team == team)
        with self.engine.connect() as connection:
            row = connection.execute(statement).mappings().first()
        return _record(row) if row else None

    def page(self, team: str, limit: int, after: str | None) -> tuple[list[BatchRecord], bool]:
        """Newest first; `after` that is no batch of the team gives an empty page."""
        with self.engine.connect() as connection:
            statement = select(BATCHES).where(BATCHES.c.team == team)
            if after:
                cursor = connection.scalar(
                    select(BATCHES.c.seq).where(BATCHES.c.team == team, BATCHES.c.id == after)
                )
                if cursor is None:
                    return [], False
                statement = statement.where(BATCHES.c.seq < cursor)
            rows = list(
                connection.execute(
                    statement.order_by(BATCHES.c.seq.desc()).limit(limit + 1)
                ).mappings()
            )
        return [_record(row) for row in rows[:limit]], len(rows) > limit

    def set_fields(
        self, batch_id: str, when_status: tuple[str, ...], **values: object
    ) -> BatchRecord | None:
        """Update the batch if its status is one of `when_status`; the batch after
        (None when it does not exist or was in another status)."""
        with self.engine.begin() as connection:
            changed = connection.execute(
                update(BATCHES)
                .where(BATCHES.c.id == batch_id, BATCHES.c.status.in_(when_status))
                .values(**values)
            ).rowcount
            return _batch(connection, batch_id) if changed else None

    def claim(self, worker_id: str, now: float, lease_s: float) -> BatchRecord | None:
        """Lease the oldest batch that needs a worker and has none alive."""
        with self.engine.connect() as connection:
            candidates = list(
                connection.scalars(
                    select(BATCHES.c.id)
                    .where(BATCHES.c.status.in_(ACTIVE), BATCHES.c.lease_until < now)
                    .order_by(BATCHES.c.seq)
                    .limit(5)
                )
            )
        for batch_id in candidates:
            with self.engine.begin() as connection:
                # Compare-and-set: only one worker's update finds the lease free.
                taken = connection.execute(
                    update(BATCHES)
                    .where(
                        BATCHES.c.id == batch_id,
                        BATCHES.c.status.in_(ACTIVE),
                        BATCHES.c.lease_until < now,
                    )
                    .values(lease_owner=worker_id, lease_until=now + lease_s)
                ).rowcount
                if taken:
                    record = _batch(connection, batch_id)
                    assert record is not None
                    return record
        return None

    def renew(self, batch_id: str, worker_id: str, now: float, lease_s: float) -> bool:
        with self.engine.begin() as connection:
            renewed = connection.execute(
                update(BATCHES)
                .where(BATCHES.c.id == batch_id, BATCHES.c.lease_owner == worker_id)
                .values(lease_until=now + lease_s)
            ).rowcount
            return renewed > 0

    def lease_owner(self, batch_id: str) -> str | None:
        with self.engine.connect() as connection:
            return connection.scalar(select(BATCHES.c.lease_owner).where(BATCHES.c.id == batch_id))

    def release(self, batch_id: str, worker_id: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                update(BATCHES)
                .where(BATCHES.c.id == batch_id, BATCHES.c.lease_owner == worker_id)
                .values(lease_owner="", lease_until=0.0)
            )

    def done_lines(self, batch_id: str) -> tuple[list[int], list[int]]:
        """The lines recorded, and those started but never recorded."""
        with self.engine.connect() as connection:
            done = list(connection.scalars(select(LINES.c.idx).where(LINES.c.batch_id == batch_id)))
            started = connection.scalars(
                select(LINE_STARTS.c.idx).where(LINE_STARTS.c.batch_id == batch_id)
            )
            finished = set(done)
            return done, [index for index in started if index not in finished]

    def record_lines(
        self, batch_id: str, results: list[LineResult], started: Sequence[int] = ()
    ) -> BatchRecord | None:
        """Mark lines started, insert results not recorded yet and recount, in
        one transaction."""
        with self.engine.begin() as connection:
            # The batch row locked first: concurrent records of one batch take
            # turns, so each recount sees the lines the others inserted.
            connection.execute(
                select(BATCHES.c.seq).where(BATCHES.c.id == batch_id).with_for_update()
            )
            if started:
                marked = set(
                    connection.scalars(
                        select(LINE_STARTS.c.idx).where(
                            LINE_STARTS.c.batch_id == batch_id, LINE_STARTS.c.idx.in_(started)
                        )
                    )
                )
                starts = [
                    {"batch_id": batch_id, "idx": index}
                    for index in dict.fromkeys(started)
                    if index not in marked
                ]
                if starts:
                    connection.execute(insert(LINE_STARTS), starts)
            if not results:
                return _batch(connection, batch_id)
            known = set(
                connection.scalars(
                    select(LINES.c.idx).where(
                        LINES.c.batch_id == batch_id,
                        LINES.c.idx.in_([r.index for r in results]),
                    )
                )
            )
            lines = []
            for result in results:
                if result.index in known:
                    continue
                known.add(result.index)
                lines.append(
                    {
                        "batch_id": batch_id,
                        "idx": result.index,
                        "custom_id": result.custom_id,
                        "ok": result.ok,
                        "line": result.line,
                        "input_tokens": result.input_tokens,
                        "output_tokens": result.output_tokens,
                    }
                )
            if lines:
                connection.execute(insert(LINES), lines)
            counts = {
                ok: (count, input_tokens, output_tokens)
                for ok, count, input_tokens, output_tokens in connection.execute(
                    select(
                        LINES.c.ok,
                        func.count(),
                        func.coalesce(func.sum(LINES.c.input_tokens), 0),
                        func.coalesce(func.sum(LINES.c.output_tokens), 0),
                    )
                    .where(LINES.c.batch_id == batch_id)
                    .group_by(LINES.c.ok)
                ).all()
            }
            succeeded = counts.get(True, (0, 0, 0))
            connection.execute(
                update(BATCHES)
                .where(BATCHES.c.id == batch_id)
                .values(
                    completed=succeeded[0],
                    failed=counts.get(False, (0, 0, 0))[0],
                    input_tokens=int(succeeded[1]),
                    output_tokens=int(succeeded[2]),
                )
            )
            return _batch(connection, batch_id)

    def drop_lines(self, batch_id: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(delete(LINES).where(LINES.c.batch_id == batch_id))
            connection.execute(delete(LINE_STARTS).where(LINE_STARTS.c.batch_id == batch_id))

    def lines(self, batch_id: str, ok: bool) -> Iterator[bytes]:
        """The recorded JSONL lines of one kind, in input order."""
        with self.engine.connect() as connection:
            yield from connection.scalars(
                select(LINES.c.line)
                .where(LINES.c.batch_id == batch_id, LINES.c.ok == ok)
                .order_by(LINES.c.idx)
                .execution_options(yield_per=500)
            )


def errors_json(errors: list[BatchError] | tuple[BatchError, ...]) -> str:
    return json.dumps([e.__dict__ for e in errors])
