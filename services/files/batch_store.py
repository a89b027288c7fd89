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

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    Integer,
    LargeBinary,
    String,
    Text,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from services.files.batch_records import ACTIVE, BatchError, BatchRecord, LineResult
from services.files.store import FileStore


class BatchBase(DeclarativeBase):
    """Apart from the files' Base, whose `create_all` stands for revision 0001."""


class StoredBatch(BatchBase):
    __tablename__ = "batches"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True, index=True)
    team: Mapped[str] = mapped_column(String(200), index=True)
    key_id: Mapped[str] = mapped_column(String(64))
    endpoint: Mapped[str] = mapped_column(String(64))
    input_file_id: Mapped[str] = mapped_column(String(40))
    completion_window: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), index=True)
    output_file_id: Mapped[str] = mapped_column(String(40), default="")
    error_file_id: Mapped[str] = mapped_column(String(40), default="")
    errors: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of BatchError
    metadata_json: Mapped[str] = mapped_column(Text, default="{}")
    total: Mapped[int] = mapped_column(Integer, default=0)
    completed: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int] = mapped_column(BigInteger)
    in_progress_at: Mapped[int] = mapped_column(BigInteger, default=0)
    finalizing_at: Mapped[int] = mapped_column(BigInteger, default=0)
    completed_at: Mapped[int] = mapped_column(BigInteger, default=0)
    failed_at: Mapped[int] = mapped_column(BigInteger, default=0)
    expired_at: Mapped[int] = mapped_column(BigInteger, default=0)
    cancelling_at: Mapped[int] = mapped_column(BigInteger, default=0)
    cancelled_at: Mapped[int] = mapped_column(BigInteger, default=0)
    lease_owner: Mapped[str] = mapped_column(String(64), default="")
    lease_until: Mapped[float] = mapped_column(Float, default=0.0)
    model: Mapped[str] = mapped_column(String(200), default="", server_default="")
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")

    def to_record(self) -> BatchRecord:
        return BatchRecord(
            id=self.id,
            team=self.team,
            key_id=self.key_id,
            endpoint=self.endpoint,
            input_file_id=self.input_file_id,
            completion_window=self.completion_window,
            status=self.status,
            output_file_id=self.output_file_id,
            error_file_id=self.error_file_id,
            errors=tuple(BatchError(**e) for e in json.loads(self.errors)),
            metadata=json.loads(self.metadata_json),
            total=self.total,
            completed=self.completed,
            failed=self.failed,
            created_at=self.created_at,
            expires_at=self.expires_at,
            in_progress_at=self.in_progress_at,
            finalizing_at=self.finalizing_at,
            completed_at=self.completed_at,
            failed_at=self.failed_at,
            expired_at=self.expired_at,
            cancelling_at=self.cancelling_at,
            cancelled_at=self.cancelled_at,
            model=self.model,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
        )


class StoredBatchLine(BatchBase):
    __tablename__ = "batch_lines"

    batch_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    idx: Mapped[int] = mapped_column(Integer, primary_key=True)
    custom_id: Mapped[str] = mapped_column(Text)
    ok: Mapped[bool] = mapped_column(Boolean)
    line: Mapped[bytes] = mapped_column(LargeBinary)
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class StoredLineStart(BatchBase):
    """A line whose request was about to go out (its result may never come)."""

    __tablename__ = "batch_line_starts"

    batch_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    idx: Mapped[int] = mapped_column(Integer, primary_key=True)


class BatchStore:
    def __init__(self, files: FileStore) -> None:
        self._sessions = sessionmaker(files.engine, expire_on_commit=False)

    def insert(self, record: BatchRecord) -> None:
        with self._sessions.begin() as session:
            session.add(
                StoredBatch(
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
                    output_file_id="",
                    error_file_id="",
                    errors="[]",
                    total=0,
                    completed=0,
                    failed=0,
                    in_progress_at=0,
                    finalizing_at=0,
                    completed_at=0,
                    failed_at=0,
                    expired_at=0,
                    cancelling_at=0,
                    cancelled_at=0,
                    lease_owner="",
                    lease_until=0.0,
                    model="",
                    input_tokens=0,
                    output_tokens=0,
                )
            )

    def get(self, batch_id: str, team: str | None = None) -> BatchRecord | None:
        with self._sessions() as session:
            statement = select(StoredBatch).where(StoredBatch.id == batch_id)
            if team is not None:
                statement = statement.where(StoredBatch.team == team)
            row = session.scalar(statement)
            return row.to_record() if row else None

    def page(self, team: str, limit: int, after: str | None) -> tuple[list[BatchRecord], bool]:
        """Newest first; `after` that is no batch of the team gives an empty page."""
        with self._sessions() as session:
            statement = select(StoredBatch).where(StoredBatch.team == team)
            if after:
                cursor = session.scalar(
                    select(StoredBatch.seq).where(StoredBatch.team == team, StoredBatch.id == after)
                )
                if cursor is None:
                    return [], False
                statement = statement.where(StoredBatch.seq < cursor)
            rows = list(
                session.scalars(statement.order_by(StoredBatch.seq.desc()).limit(limit + 1))
            )
        return [row.to_record() for row in rows[:limit]], len(rows) > limit

    def set_fields(
        self, batch_id: str, when_status: tuple[str, ...], **values: object
    ) -> BatchRecord | None:
        """Update the batch if its status is one of `when_status`; the batch after
        (None when it does not exist or was in another status)."""
        with self._sessions.begin() as session:
            changed = _count(
                session.execute(
                    update(StoredBatch)
                    .where(StoredBatch.id == batch_id, StoredBatch.status.in_(when_status))
                    .values(**values)
                )
            )
            if not changed:
                return None
            row = session.scalar(select(StoredBatch).where(StoredBatch.id == batch_id))
            return row.to_record() if row else None

    def claim(self, worker_id: str, now: float, lease_s: float) -> BatchRecord | None:
        """Lease the oldest batch that needs a worker and has none alive."""
        with self._sessions() as session:
            candidates = list(
                session.scalars(
                    select(StoredBatch.id)
                    .where(StoredBatch.status.in_(ACTIVE), StoredBatch.lease_until < now)
                    .order_by(StoredBatch.seq)
                    .limit(5)
                )
            )
        for batch_id in candidates:
            with self._sessions.begin() as session:
                # Compare-and-set: only one worker's update finds the lease free.
                taken = _count(
                    session.execute(
                        update(StoredBatch)
                        .where(
                            StoredBatch.id == batch_id,
                            StoredBatch.status.in_(ACTIVE),
                            StoredBatch.lease_until < now,
                        )
                        .values(lease_owner=worker_id, lease_until=now + lease_s)
                    )
                )
                if taken:
                    row = session.scalar(select(StoredBatch).where(StoredBatch.id == batch_id))
                    assert row is not None
                    return row.to_record()
        return None

    def renew(self, batch_id: str, worker_id: str, now: float, lease_s: float) -> bool:
        with self._sessions.begin() as session:
            return (
                _count(
                    session.execute(
                        update(StoredBatch)
                        .where(StoredBatch.id == batch_id, StoredBatch.lease_owner == worker_id)
                        .values(lease_until=now + lease_s)
                    )
                )
                > 0
            )

    def lease_owner(self, batch_id: str) -> str | None:
        with self._sessions() as session:
            return session.scalar(select(StoredBatch.lease_owner).where(StoredBatch.id == batch_id))

    def release(self, batch_id: str, worker_id: str) -> None:
        with self._sessions.begin() as session:
            session.execute(
                update(StoredBatch)
                .where(StoredBatch.id == batch_id, StoredBatch.lease_owner == worker_id)
                .values(lease_owner="", lease_until=0.0)
            )

    def done_lines(self, batch_id: str) -> tuple[list[int], list[int]]:
        """The lines recorded, and those started but never recorded."""
        with self._sessions() as session:
            done = list(
                session.scalars(
                    select(StoredBatchLine.idx).where(StoredBatchLine.batch_id == batch_id)
                )
            )
            started = session.scalars(
                select(StoredLineStart.idx).where(StoredLineStart.batch_id == batch_id)
            )
            finished = set(done)
            return done, [index for index in started if index not in finished]

    def record_lines(
        self, batch_id: str, results: list[LineResult], started: Sequence[int] = ()
    ) -> BatchRecord | None:
        """Mark lines started, insert results not recorded yet and recount, in
        one transaction."""
        with self._sessions.begin() as session:
            # The batch row locked first: concurrent records of one batch take
            # turns, so each recount sees the lines the others inserted.
            session.execute(
                select(StoredBatch.seq).where(StoredBatch.id == batch_id).with_for_update()
            )
            if started:
                marked = set(
                    session.scalars(
                        select(StoredLineStart.idx).where(
                            StoredLineStart.batch_id == batch_id,
                            StoredLineStart.idx.in_(started),
                        )
                    )
                )
                session.add_all(
                    StoredLineStart(batch_id=batch_id, idx=index)
                    for index in dict.fromkeys(started)
                    if index not in marked
                )
            if not results:
                session.flush()
                row = session.scalar(select(StoredBatch).where(StoredBatch.id == batch_id))
                return row.to_record() if row else None
            known = set(
                session.scalars(
                    select(StoredBatchLine.idx).where(
                        StoredBatchLine.batch_id == batch_id,
                        StoredBatchLine.idx.in_([r.index for r in results]),
                    )
                )
            )
            for result in results:
                if result.index in known:
                    continue
                known.add(result.index)
                session.add(
                    StoredBatchLine(
                        batch_id=batch_id,
                        idx=result.index,
                        custom_id=result.custom_id,
                        ok=result.ok,
                        line=result.line,
                        input_tokens=result.input_tokens,
                        output_tokens=result.output_tokens,
                    )
                )
            session.flush()
            counts = {
                ok: (count, input_tokens, output_tokens)
                for ok, count, input_tokens, output_tokens in session.execute(
                    select(
                        StoredBatchLine.ok,
                        func.count(),
                        func.coalesce(func.sum(StoredBatchLine.input_tokens), 0),
                        func.coalesce(func.sum(StoredBatchLine.output_tokens), 0),
                    )
                    .where(StoredBatchLine.batch_id == batch_id)
                    .group_by(StoredBatchLine.ok)
                ).all()
            }
            succeeded = counts.get(True, (0, 0, 0))
            session.execute(
                update(StoredBatch)
                .where(StoredBatch.id == batch_id)
                .values(
                    completed=succeeded[0],
                    failed=counts.get(False, (0, 0, 0))[0],
                    input_tokens=int(succeeded[1]),
                    output_tokens=int(succeeded[2]),
                )
            )
            row = session.scalar(select(StoredBatch).where(StoredBatch.id == batch_id))
            return row.to_record() if row else None

    def drop_lines(self, batch_id: str) -> None:
        with self._sessions.begin() as session:
            session.execute(delete(StoredBatchLine).where(StoredBatchLine.batch_id == batch_id))
            session.execute(delete(StoredLineStart).where(StoredLineStart.batch_id == batch_id))

    def lines(self, batch_id: str, ok: bool) -> Iterator[bytes]:
        """The recorded JSONL lines of one kind, in input order."""
        with self._sessions() as session:
            yield from session.scalars(
                select(StoredBatchLine.line)
                .where(StoredBatchLine.batch_id == batch_id, StoredBatchLine.ok == ok)
                .order_by(StoredBatchLine.idx)
                .execution_options(yield_per=500)
            )


def errors_json(errors: list[BatchError] | tuple[BatchError, ...]) -> str:
    return json.dumps([e.__dict__ for e in errors])


def _count(result: object) -> int:
    """Rows an UPDATE matched (a CursorResult's rowcount)."""
    return int(getattr(result, "rowcount", 0) or 0)
