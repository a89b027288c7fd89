"""Batch lines wait while live traffic is at its threshold, and go on after."""

from __future__ import annotations

import asyncio

from edge.live_traffic import LiveTraffic


def test_quiet_waits_while_live_requests_are_at_the_threshold() -> None:
    async def scenario() -> list[str]:
        live = LiveTraffic(threshold=2)
        events: list[str] = []
        live.enter()
        await asyncio.wait_for(live.quiet(), 1)  # one live request: below the threshold
        live.enter()

        async def batch_line() -> None:
            await live.quiet()
            events.append("batch line starts")

        waiting = asyncio.create_task(batch_line())
        await asyncio.sleep(0.05)
        events.append("live request ends")
        live.leave()
        await asyncio.wait_for(waiting, 1)
        live.leave()
        assert live.in_flight == 0
        return events

    assert asyncio.run(scenario()) == ["live request ends", "batch line starts"]
