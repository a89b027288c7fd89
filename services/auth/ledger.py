"""The usage ledger, written ahead: a settle is acknowledged only once its rows
are committed, so a settle the edge saw succeed survives a kill -9 of this
replica. Concurrent settles share one transaction (a group commit): rows that
arrive while a write is in flight go together in the next one, so a busy
replica commits once per database round trip, not once per settle.

Rows waiting for their commit are bounded (MAX_PENDING): past that, while the
database is slow or down, a settle is refused UNAVAILABLE at once rather than
held, and the edge keeps it and retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from core.errors import Kind, ServiceError
from services.auth.store import KeyStore

log = logging.getLogger(__name__)
MAX_PENDING = 20_000  # rows (~1 KiB each in memory at most)
PURGE_EVERY_S = 3600.0
COMMIT_DELAY_S = 0.002


class UsageLedger:
    def __init__(
        self, store: KeyStore, retention_days: float, max_pending: int = MAX_PENDING
    ) -> None:
        self.store = store
        self.retention_s = retention_days * 86400
        self.max_pending = max_pending
        self._pending: list[dict[str, Any]] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._writer: asyncio.Task[None] | None = None
        self._grouped = False  # the last commit answered more than one settle
        self._purger: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        self._purger = asyncio.create_task(self._purge_loop())

    async def record(self, rows: list[dict[str, Any]]) -> None:
        """Return once `rows` are committed (rows already in are skipped)."""
        if not rows:
            return
        if len(self._pending) + len(rows) > self.max_pending:
            raise ServiceError(
                Kind.UNAVAILABLE,
                "LEDGER_BACKLOG_FULL",
                f"The usage ledger is not keeping up ({len(self._pending)} rows waiting for "
                "the database); retry shortly.",
            )
        done = asyncio.get_running_loop().create_future()
        self._pending.extend(rows)
        self._waiters.append(done)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_loop())
        await done

    async def _write_loop(self) -> None:
        while self._pending:
            # When settles come together, let those of callers answered by the
            # last commit come back first: else the first of them goes alone and
            # the rest wait a whole commit behind it. A lone settle goes at once,
            # as PostgreSQL's commit_delay waits only when others are active (an
            # idle wait cost a lightly loaded replica ~300 us of CPU a settle).
            if self._grouped:
                await asyncio.sleep(COMMIT_DELAY_S)
            rows, self._pending = self._pending, []
            waiters, self._waiters = self._waiters, []
            self._grouped = len(waiters) > 1
            try:
                await asyncio.to_thread(self.store.add_usage, rows)
            except Exception as error:
                if not isinstance(error, ServiceError):  # a fault is logged by the store
                    log.exception("usage rows not written", extra={"rows": len(rows)})
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(error)
                continue
            for waiter in waiters:
                if not waiter.done():  # a caller that went away: its rows are in anyway
                    waiter.set_result(None)

    async def close(self) -> None:
        """Stop purging; let the write in flight finish (its callers wait for it)."""
        if self._purger is not None:
            self._purger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._purger
        if self._writer is not None:
            with contextlib.suppress(Exception):
                await self._writer

    async def _purge_loop(self) -> None:
        while True:
            try:
                purged = await asyncio.to_thread(
                    self.store.purge_usage, time.time() - self.retention_s
                )
                if purged:
                    log.info("usage rows purged", extra={"rows": purged})
            except ServiceError:
                pass  # the database is down: logged once by the store, tried next hour
            except Exception:
                log.exception("usage purge failed")
            await asyncio.sleep(PURGE_EVERY_S)
