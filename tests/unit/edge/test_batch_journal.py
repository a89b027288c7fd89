"""The batch worker's group commit of line marks and results (edge/batch_worker.py
Journal): what queues while one write is out goes in the next, each caller
returns once its own entry is written, and a failed write fails its callers only."""

from __future__ import annotations

import asyncio

import pytest
from aqueduct.files.v1 import files_pb2 as pb

from edge.batch_worker import Journal


class Writes:
    def __init__(self) -> None:
        self.calls: list[tuple[list[int], list[int]]] = []  # (result indexes, started)
        self.gate = asyncio.Event()
        self.fail: set[int] = set()  # call numbers (0-based) that raise

    async def __call__(self, results: list[pb.BatchLineResult], started: list[int]) -> None:
        number = len(self.calls)
        self.calls.append(([r.index for r in results], list(started)))
        await self.gate.wait()
        if number in self.fail:
            raise RuntimeError(f"write {number} failed")


def result(index: int) -> pb.BatchLineResult:
    return pb.BatchLineResult(index=index, custom_id=f"c{index}", ok=True, line=b"{}")


def test_entries_queued_during_a_write_share_the_next_one() -> None:
    async def scenario() -> Writes:
        writes = Writes()
        journal = Journal(writes)
        first = asyncio.create_task(journal.started(0))
        await asyncio.sleep(0)  # the first write is out, held at the gate
        rest = [asyncio.create_task(journal.started(n)) for n in (1, 2)]
        rest += [asyncio.create_task(journal.finished(result(n))) for n in (7, 8)]
        await asyncio.sleep(0)
        assert not first.done() and not any(task.done() for task in rest)
        writes.gate.set()
        await asyncio.gather(first, *rest)
        return writes

    writes = asyncio.run(scenario())
    assert writes.calls == [([], [0]), ([7, 8], [1, 2])]


def test_a_failed_write_fails_its_callers_and_the_next_write_goes_on() -> None:
    async def scenario() -> tuple[Writes, list[BaseException | None]]:
        writes = Writes()
        writes.fail = {0}
        journal = Journal(writes)
        failing = [asyncio.create_task(journal.started(n)) for n in (0, 1)]
        await asyncio.sleep(0)
        writes.gate.set()
        outcomes = await asyncio.gather(*failing, return_exceptions=True)
        await journal.finished(result(5))  # a later write is not held back
        return writes, [o if isinstance(o, BaseException) else None for o in outcomes]

    writes, outcomes = asyncio.run(scenario())
    assert all(isinstance(o, RuntimeError) for o in outcomes), outcomes
    assert writes.calls == [([], [0, 1]), ([5], [])]


def test_a_caller_cancelled_while_waiting_does_not_stop_the_others() -> None:
    async def scenario() -> Writes:
        writes = Writes()
        journal = Journal(writes)
        leaving = asyncio.create_task(journal.started(0))
        staying = asyncio.create_task(journal.started(1))
        await asyncio.sleep(0)
        leaving.cancel()
        writes.gate.set()
        await staying
        with pytest.raises(asyncio.CancelledError):
            await leaving
        return writes

    assert asyncio.run(scenario()).calls == [([], [0, 1])]
