"""The usage ledger: rows queue in memory and reach the database in batches,
off the request path; whatever is queued is flushed on shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from services.auth.store import KeyStore

log = logging.getLogger(__name__)
FLUSH_EVERY_S = 0.5
MAX_BATCH = 1000
PURGE_EVERY_S = 3600.0


class UsageLedger:
    def __init__(self, store: KeyStore, retention_days: float) -> None:
        self.store = store
        self.retention_s = retention_days * 86400
        self._pending: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._flush_loop()),
            asyncio.create_task(self._purge_loop()),
        ]

    def add(self, row: dict[str, Any]) -> None:
        self._pending.append(row)
        if len(self._pending) >= MAX_BATCH:
            self._wake.set()

    async def flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            try:
                await asyncio.to_thread(self.store.add_usage, batch)
            except Exception:
                self._pending[:0] = batch  # keep them for the next try; lose nothing
                raise

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.flush()

    async def _flush_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), FLUSH_EVERY_S)
            self._wake.clear()
            try:
                await self.flush()
            except Exception:  # the database may come back; rows stay queued
                log.exception("usage flush failed", extra={"pending": len(self._pending)})

    async def _purge_loop(self) -> None:
        while True:
            try:
                purged = await asyncio.to_thread(
                    self.store.purge_usage, time.time() - self.retention_s
                )
                if purged:
                    log.info("usage rows purged", extra={"rows": purged})
            except Exception:
                log.exception("usage purge failed")
            await asyncio.sleep(PURGE_EVERY_S)
