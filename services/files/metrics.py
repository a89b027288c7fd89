"""The files service's metrics: live bytes stored per team.

Read from the database when scraped (at most every REFRESH_S), so every replica
reports the same shared totals; the MOST_TEAMS largest teams are named, the
rest summed as "other" (bounded cardinality).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.files.store import FileStore

MOST_TEAMS = 100
REFRESH_S = 5.0


class StoredBytes(Collector):
    def __init__(self, store: FileStore) -> None:
        self.store = store
        self.by_team: list[tuple[str, int]] = []
        self.other = 0
        self._read_at = -REFRESH_S

    async def refresh(self) -> None:
        if time.monotonic() - self._read_at < REFRESH_S:
            return
        self._read_at = time.monotonic()
        rows = await asyncio.to_thread(self.store.usage_by_team, int(time.time()))
        self.by_team = rows[:MOST_TEAMS]
        self.other = sum(size for _, size in rows[MOST_TEAMS:])

    def collect(self) -> Iterator[Metric]:
        stored = GaugeMetricFamily(
            "aqueduct_files_stored_bytes", "Live bytes stored, by team.", labels=["team"]
        )
        for team, size in self.by_team:
            stored.add_metric([team], size)
        if self.other:
            stored.add_metric(["other"], self.other)
        yield stored
