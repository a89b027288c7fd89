"""Settles on their way to auth: batched, retried until delivered, bounded.

A settle gives a request's limits back and carries its ledger row, so it is
never given up while its process runs (the edge, or inference metering an
internal caller): when auth cannot be reached (a restart, an
outage) settles wait here, oldest first, and go as soon as a call succeeds
again — to any auth replica, since the channel balances over the ready ones.
Auth settles idempotently, so a settle resent after a lost answer counts once.

The wait is bounded: at most MAX_PENDING settles a queue (about 300 bytes each, so
~15 MiB) are held, plus one batch in flight; past that the oldest are dropped,
with an error in the log.
A warning says when the queue passes WARN_AT. What is still queued when the
process stops after its drain timeout is lost, and the log says how many.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import TYPE_CHECKING

import grpc
from aqueduct.auth.v1 import auth_pb2 as pb

if TYPE_CHECKING:
    from aqueduct.auth.v1.auth_pb2_grpc import AuthServiceAsyncStub

log = logging.getLogger(__name__)
MAX_PENDING = 50_000
WARN_AT = MAX_PENDING * 8 // 10
BATCH = 1_000
CALL_TIMEOUT_S = 10.0
RETRY_FIRST_S = 0.05
RETRY_MAX_S = 1.0


class SettleQueue:
    """Settles queue up while one SettleQuotas call is in flight and go in the
    next, so a busy edge sends one call per round trip, not per request.

    A settle waits at most `wait_s` before a call goes: for others to share it
    (ledger rows), or for a reservation to carry it (`take`: the edge's limit
    settles ride on the next SettleAndReserveQuota). With 0 it goes at once.
    `paced` (ledger rows, which nothing waits for): at most one call per `wait_s`
    unless a whole BATCH is queued, not one per round trip (a busy edge sent
    ~140 calls a second of ~4 rows each, and auth's cost is mostly per call)."""

    def __init__(
        self, stub: AuthServiceAsyncStub, wait_s: float = 0.0, paced: bool = False
    ) -> None:
        self.stub = stub
        self.wait_s = wait_s
        self.paced = paced and wait_s > 0
        self._hurry = False  # draining: no pacing
        self.dropped = 0
        self._queue: deque[pb.Settlement] = deque()
        self._sending: list[pb.Settlement] = []
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._warned = False

    @property
    def pending(self) -> int:
        return len(self._queue) + len(self._sending)

    def add(self, settle: pb.Settlement) -> None:
        """Queue a settle; a call takes it within `wait_s`."""
        self._queue.append(settle)
        self._bound()
        self._start_flusher()
        if not self.wait_s:
            self._wake.set()
        else:
            self._arm()

    def take(self, most: int) -> list[pb.Settlement]:
        """Up to `most` of the oldest queued settles, for the caller to deliver in a
        call of its own; whatever that call does not deliver goes to `give_back`."""
        count = min(most, len(self._queue))
        return [self._queue.popleft() for _ in range(count)]

    def give_back(self, settles: list[pb.Settlement]) -> None:
        """Settles from `take` that may not have been delivered: first in line again,
        sent at once (auth settles idempotently, so a delivered one counts once)."""
        if not settles:
            return
        self._queue.extendleft(reversed(settles))
        self._bound()
        self._start_flusher()
        self._wake.set()

    def _start_flusher(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_loop())

    def _bound(self) -> None:
        """Drop the oldest settles past MAX_PENDING. While a batch is in flight its
        settles are the oldest, and the bound waits for its outcome (so it may be
        passed by at most one batch)."""
        while self.pending > MAX_PENDING and not self._sending:
            self._queue.popleft()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error(
                    "settles dropped: auth unreachable and the queue is full",
                    extra={"dropped": self.dropped, "max_pending": MAX_PENDING},
                )
        pending = self.pending
        if pending >= WARN_AT and not self._warned:
            self._warned = True
            log.warning(
                "settles piling up: auth unreachable",
                extra={"pending": pending, "max_pending": MAX_PENDING},
            )
        elif pending < WARN_AT // 2:
            self._warned = False

    def _arm(self) -> None:
        """Wake the flusher `wait_s` from now, unless a wake is already due."""
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.wait_s, self._wake_now)

    def _wake_now(self) -> None:
        self._timer = None
        self._wake.set()

    async def _flush_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            retry_s = RETRY_FIRST_S
            while self._queue:
                count = min(BATCH, len(self._queue))
                self._sending = [self._queue.popleft() for _ in range(count)]
                delivered = await self._send(self._sending)
                if delivered:
                    self._sending = []
                    if retry_s > RETRY_FIRST_S:
                        log.info("settles delivered again", extra={"pending": self.pending})
                    retry_s = RETRY_FIRST_S
                    if self.paced and not self._hurry and 0 < len(self._queue) < BATCH:
                        self._arm()  # the rest goes with the next wake, `wait_s` on
                        break
                    continue
                # Back to the front, in order, and wait before the next try.
                self._queue.extendleft(reversed(self._sending))
                self._sending = []
                self._bound()
                if retry_s == RETRY_FIRST_S:  # once per outage, not once per try
                    log.warning(
                        "settles failing; kept and retried", extra={"pending": self.pending}
                    )
                await asyncio.sleep(retry_s)
                retry_s = min(retry_s * 2, RETRY_MAX_S)

    async def _send(self, batch: list[pb.Settlement]) -> bool:
        try:
            await self.stub.SettleQuotas(
                pb.SettleQuotasRequest(settles=batch), timeout=CALL_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as error:
            log.debug("settle call failed", extra={"code": error.code().name})
            return False
        return True

    async def drain(self, timeout: float = 10.0) -> None:
        """Deliver what is queued, for at most `timeout` (at shutdown)."""
        if self._flusher is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._hurry = True
        self._wake.set()
        while self.pending and loop.time() < deadline:
            await asyncio.sleep(0.01)
        self._flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._flusher
        if self.pending:
            log.error("settles lost at shutdown", extra={"settles": self.pending})
