"""Live requests in flight, so that batch lines yield to them.

The hot path pays one increment and one decrement; the batch worker waits on
`quiet()` before it starts a line, so a burst of live traffic pauses batches
instead of queueing behind them.
"""

from __future__ import annotations

import asyncio


class LiveTraffic:
    def __init__(self, threshold: int) -> None:
        self.threshold = threshold  # batch lines start only below this many live requests
        self.in_flight = 0
        self._quiet = asyncio.Event()
        self._quiet.set()

    def enter(self) -> None:
        self.in_flight += 1
        if self.in_flight >= self.threshold:
            self._quiet.clear()

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight < self.threshold:
            self._quiet.set()

    async def quiet(self) -> None:
        """Return once live traffic is below the threshold."""
        while not self._quiet.is_set():
            await self._quiet.wait()
