"""The batch worker every edge runs: claim a batch, run its lines, finish it.

A batch is claimed with a lease in the files service (BatchesService), renewed
while it runs, so two edges never run one batch and a dead edge's batch is
taken over once its lease runs out. Each line runs through the edge's own
handlers (edge/pipeline.py, edge/embeddings.py) exactly as a live request with
the batch key's principal: model access, limits reserved and settled, a ledger
row naming the batch. At most `concurrency` lines of a batch run at once, and a
line starts only while live traffic is below its threshold (edge/live_traffic.py).

Every finished line is recorded in the files service before it counts as done;
a batch picked up again (after a restart or by another edge) skips recorded
lines. No line is ever sent upstream twice: once a line is admitted (model
access, limits) and right before its request goes out, it is marked started in
the files service, durably. A line found started but not recorded (its edge
died, or its result could not be recorded) may or may not have run: it is not
run again but goes to the error file as `batch_line_interrupted`, and counts
as failed. Marks and results of lines running side by side share one
RecordBatchLines call (Journal: a group commit), so marking costs about one
write per line at most, fewer under load.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

import grpc
import orjson
from aqueduct.auth.v1 import auth_pb2
from aqueduct.files.v1 import files_pb2 as pb

from edge.batch_input import MAX_INPUT_BYTES, InputLine, LineError, parse_input
from edge.config import BatchSettings
from edge.errors import ApiError, from_rpc_error
from edge.line_outcome import BeforeCall, LineOutcome
from edge.live_traffic import LiveTraffic

if TYPE_CHECKING:
    from aqueduct.auth.v1.auth_pb2_grpc import AuthServiceAsyncStub
    from aqueduct.files.v1.files_pb2_grpc import BatchesServiceAsyncStub, FilesServiceAsyncStub

log = logging.getLogger(__name__)
LineRunner = Callable[[auth_pb2.Principal, object, str, str, BeforeCall], Awaitable[LineOutcome]]
CALL_TIMEOUT_S = 10.0
MAX_RETRY_WAIT_S = 60.0
RECORD_ATTEMPTS = 4
RECORD_CHUNK = 1000  # lines per RecordBatchLines call when many are written at once
INTERRUPTED = "batch_line_interrupted"
INTERRUPTED_MESSAGE = (
    "This request was running when its batch worker stopped, before its result was "
    "recorded. It may or may not have reached the model; it was not run again, so that "
    "no request of a batch ever runs twice."
)


def output_line(custom_id: str, outcome: LineOutcome) -> bytes:
    """OpenAI's batch output line: the response a live request would have got."""
    return orjson.dumps(
        {
            "id": "batch_req_" + secrets.token_hex(12),
            "custom_id": custom_id,
            "response": {
                "status_code": outcome.status,
                "request_id": outcome.request_id,
                "body": orjson.Fragment(outcome.body),
            },
            "error": None,
        }
    )


def unrun_line(custom_id: str, code: str, message: str) -> bytes:
    """A line the batch ended before running (cancelled, expired)."""
    return orjson.dumps(
        {
            "id": "batch_req_" + secrets.token_hex(12),
            "custom_id": custom_id,
            "response": None,
            "error": {"code": code, "message": message},
        }
    )


class Journal:
    """A batch's line marks and results on their way to the files service.

    Whatever queues while one RecordBatchLines call is out goes in the next (a
    group commit): lines running side by side share their writes. Each caller
    returns once its own mark or result is durable, or raises what the call raised.
    """

    def __init__(
        self, write: Callable[[list[pb.BatchLineResult], list[int]], Awaitable[None]]
    ) -> None:
        self._write = write
        self._results: list[pb.BatchLineResult] = []
        self._started: list[int] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def started(self, index: int) -> None:
        self._started.append(index)
        await self._queued()

    async def finished(self, result: pb.BatchLineResult) -> None:
        self._results.append(result)
        await self._queued()

    async def _queued(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        await waiter

    async def _flush(self) -> None:
        while self._waiters:
            results, started, waiters = self._results, self._started, self._waiters
            self._results, self._started, self._waiters = [], [], []
            try:
                await self._write(results, started)
            except asyncio.CancelledError:
                for waiter in waiters + self._waiters:
                    waiter.cancel()
                raise
            except Exception as error:
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(error)
            else:
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(None)


class BatchWorker:
    def __init__(
        self,
        settings: BatchSettings,
        batches: BatchesServiceAsyncStub,
        files: FilesServiceAsyncStub,
        auth: AuthServiceAsyncStub,
        runners: Mapping[str, LineRunner],
        live: LiveTraffic,
    ) -> None:
        self.settings = settings
        self.batches = batches
        self.files = files
        self.auth = auth
        self.runners = runners
        self.live = live
        self.worker_id = "edge-" + secrets.token_hex(8)
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.lines_run = 0  # for tests and logs
        self.lines_in_flight = 0  # started past the live-traffic gate, not ended yet

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def start(self) -> None:
        self._stopping.clear()
        if self.settings.enabled:
            self._task = asyncio.create_task(self._claim_forever())

    async def close(self) -> None:
        """Start no new line; let running ones end (up to the grace) and record them."""
        if self._task is None:
            return
        self._stopping.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), self.settings.stop_grace_s + 5)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _claim_forever(self) -> None:
        while not self._stopping.is_set():
            claimed, failed = None, True
            try:
                answer = await self.batches.ClaimBatch(
                    pb.ClaimBatchRequest(
                        worker_id=self.worker_id, lease_seconds=round(self.settings.lease_s)
                    ),
                    timeout=CALL_TIMEOUT_S,
                )
                if answer.HasField("batch"):
                    claimed = answer.batch
                    await BatchRun(self, claimed).run()
                failed = False
            except grpc.aio.AioRpcError as error:
                log.warning("batch worker: files service call failed: %s", error.code().name)
            except Exception:
                log.exception("batch worker failed; trying again later")
            if claimed is None or failed:  # nothing to do, or a fault: not in a tight loop
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self.settings.poll_s)


class BatchRun:
    """One claimed batch, from its input file to FinishBatch."""

    def __init__(self, worker: BatchWorker, batch: pb.Batch) -> None:
        self.worker = worker
        self.batch = batch
        self.settings = worker.settings
        self.status = batch.status
        self.expires_at = batch.expires_at
        self.lost = False
        self.principal = auth_pb2.Principal()
        self.revoked: ApiError | None = None  # the key may no longer run: the batch ends
        self.model = ""  # the one model the lines ask for, if one
        self.journal = Journal(self._record)
        self.sent: set[int] = set()  # lines marked started by this run: never run again

    async def run(self) -> None:
        renewer = asyncio.create_task(self._renew_forever())
        try:
            await self._run()
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            if not self.lost and self.status in ACTIVE_STATUSES:
                await self._release()  # stopping mid-batch: the next edge takes it at once

    async def _run(self) -> None:
        batch = self.batch
        try:
            self.principal = await self._principal()
        except ApiError as error:
            await self._finish(
                pb.BATCH_STATUS_FAILED, [LineError(error.code or "key", error.message, 0)]
            )
            return
        content = await self._input()
        if content is None:
            return
        lines, errors = await asyncio.to_thread(parse_input, content, batch.endpoint)
        if errors:
            await self._finish(pb.BATCH_STATUS_FAILED, errors)
            return
        models = {str(line.body["model"]) for line in lines}
        self.model = models.pop() if len(models) == 1 else ""
        started = await self._start(len(lines))
        self._update(started.batch)
        done = set(started.done_lines)
        # Started by an earlier run and never recorded: they may have run.
        stranded = set(started.interrupted_lines) - done
        await self._interrupt([line for line in lines if line.index in stranded])
        done |= stranded
        todo = [line for line in lines if line.index not in done]
        for _ in range(3):  # a line not sent (its mark failed) is tried again
            if not todo or not self._running():
                break
            await self._run_lines(todo)
            done = await self._done(len(lines))
            tried = done | self.sent
            todo = [line for line in lines if line.index not in tried]
        if not self.lost and not self.worker.stopping:
            # Sent, but the answer or its record failed: they may have run.
            await self._interrupt(
                [line for line in lines if line.index in self.sent and line.index not in done]
            )
        await self._end(lines, unrecorded=len(todo))

    async def _start(self, total: int) -> pb.StartBatchResponse:
        return await self.worker.batches.StartBatch(
            pb.StartBatchRequest(
                batch_id=self.batch.id,
                worker_id=self.worker.worker_id,
                total=total,
                model=self.model,
            ),
            timeout=CALL_TIMEOUT_S,
        )

    async def _done(self, total: int) -> set[int]:
        """The lines recorded so far (StartBatch is idempotent and answers them)."""
        latest = await self._start(total)
        self._update(latest.batch)
        return set(latest.done_lines)

    async def _interrupt(self, lines: list[InputLine]) -> None:
        """Lines that were started and have no result: failed, never run again."""
        if lines:
            log.warning(
                "batch lines interrupted; not run again",
                extra={"batch_id": self.batch.id, "lines": len(lines)},
            )
        results = [
            pb.BatchLineResult(
                index=line.index,
                custom_id=line.custom_id,
                ok=False,
                line=unrun_line(line.custom_id, INTERRUPTED, INTERRUPTED_MESSAGE),
            )
            for line in lines
        ]
        for start in range(0, len(results), RECORD_CHUNK):
            await self._record(results[start : start + RECORD_CHUNK])

    async def _principal(self) -> auth_pb2.Principal:
        try:
            answer = await self.worker.auth.GetPrincipal(
                auth_pb2.GetPrincipalRequest(key_id=self.batch.key_id), timeout=CALL_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as error:
            mapped = from_rpc_error(error, "auth")
            if mapped.status == 401:
                raise mapped from None
            raise
        return answer.principal

    async def _input(self) -> bytes | None:
        """The input file's bytes; None (and the batch failed) when it is gone or too big."""
        call = self.worker.files.DownloadFileContent(
            pb.DownloadFileContentRequest(team=self.batch.team, file_id=self.batch.input_file_id)
        )
        chunks: list[bytes] = []
        size = 0
        try:
            async for message in call:
                if message.HasField("file") and message.file.bytes > MAX_INPUT_BYTES:
                    call.cancel()
                    break
                size += len(message.chunk)
                chunks.append(message.chunk)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                raise
            await self._finish(
                pb.BATCH_STATUS_FAILED,
                [
                    LineError(
                        "input_file_not_found",
                        f"The input file {self.batch.input_file_id} no longer exists.",
                        0,
                    )
                ],
            )
            return None
        if call.cancelled() or size > MAX_INPUT_BYTES:
            await self._finish(
                pb.BATCH_STATUS_FAILED,
                [
                    LineError(
                        "file_too_large",
                        f"A batch's input file may hold at most {MAX_INPUT_BYTES} bytes.",
                        0,
                    )
                ],
            )
            return None
        return b"".join(chunks)

    def _update(self, batch: pb.Batch) -> None:
        """The batch as the files service last answered it (a cancel, a new expiry)."""
        self.status, self.expires_at = batch.status, batch.expires_at

    def _running(self) -> bool:
        return (
            self.status == pb.BATCH_STATUS_IN_PROGRESS
            and not self.lost
            and not self.worker.stopping
            and self.revoked is None
            and time.time() < self.expires_at
        )

    async def _run_lines(self, todo: list[InputLine]) -> None:
        runner = self.worker.runners[self.batch.endpoint]
        running: set[asyncio.Task[None]] = set()
        for line in todo:
            # A free slot, or the edge stopping (its grace starts now, not when a
            # slot frees up).
            while len(running) >= self.settings.concurrency and not self.worker.stopping:
                await asyncio.wait(set(running), timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
            await self.worker.live.quiet()  # live traffic first
            if not self._running():
                break
            # The principal as last fetched: a key changed meanwhile runs with its new limits.
            self.worker.lines_in_flight += 1
            task = asyncio.create_task(self._line(runner, self.principal, line))
            running.add(task)
            task.add_done_callback(running.discard)
        # The lines already started end and are recorded; when the edge stops,
        # they get up to the grace period.
        stop_by: float | None = None
        while running:
            await asyncio.wait(set(running), timeout=0.5)
            if self.worker.stopping:
                stop_by = stop_by or time.monotonic() + self.settings.stop_grace_s
                if time.monotonic() > stop_by:
                    break

    async def _line(
        self,
        runner: LineRunner,
        principal: auth_pb2.Principal,
        line: InputLine,
    ) -> None:
        async def before_call() -> None:
            await self.journal.started(line.index)  # durable before the request goes out
            self.sent.add(line.index)

        try:
            rid = "batch_req_" + secrets.token_hex(12)
            deadline = time.monotonic() + MAX_RETRY_WAIT_S * 10
            while True:
                outcome = await runner(principal, line.body, rid, self.batch.id, before_call)
                if outcome.retry_after_s is None or not self._running():
                    break
                if time.monotonic() > deadline:
                    break
                # Refused by the key's own limits: wait as a client would, then again.
                await asyncio.sleep(min(outcome.retry_after_s, MAX_RETRY_WAIT_S))
            if outcome.retry_after_s is not None and not self._running():
                return  # not run: a resumed batch runs it, a cancelled one lists it
            self.worker.lines_run += 1
            ok = outcome.status == 200
            await self.journal.finished(
                pb.BatchLineResult(
                    index=line.index,
                    custom_id=line.custom_id,
                    ok=ok,
                    line=output_line(line.custom_id, outcome),
                    input_tokens=outcome.input_tokens if ok else 0,
                    output_tokens=outcome.output_tokens if ok else 0,
                )
            )
        except Exception:
            log.exception("batch line failed", extra={"batch_id": self.batch.id})
        finally:
            self.worker.lines_in_flight -= 1

    async def _record(
        self, results: list[pb.BatchLineResult], started: list[int] | None = None
    ) -> None:
        request = pb.RecordBatchLinesRequest(
            batch_id=self.batch.id,
            worker_id=self.worker.worker_id,
            results=results,
            started=started or [],
        )
        for attempt in range(RECORD_ATTEMPTS):
            try:
                answer = await self.worker.batches.RecordBatchLines(request, timeout=CALL_TIMEOUT_S)
                break
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    self.lost = True
                    raise
                if attempt == RECORD_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(0.2 * 2**attempt)
        self._update(answer.batch)

    async def _end(self, lines: list[InputLine], unrecorded: int) -> None:
        """Finish as the batch stands: completed, cancelled or expired (unrun lines
        go to the error file), or leave it for the next worker (stopping, lease lost)."""
        if self.lost:
            return
        if self.revoked is not None:
            final, code = pb.BATCH_STATUS_FAILED, self.revoked.code or "invalid_api_key"
            why = f"The batch stopped before this request ran: {self.revoked.message}"
        elif self.status == pb.BATCH_STATUS_CANCELLING:
            final, code = pb.BATCH_STATUS_CANCELLED, "batch_cancelled"
            why = "The batch was cancelled before this request ran."
        elif time.time() >= self.expires_at:
            final, code = pb.BATCH_STATUS_EXPIRED, "batch_expired"
            why = "The batch expired before this request ran."
        elif self.worker.stopping or unrecorded:
            if unrecorded:
                log.warning(
                    "batch lines unrecorded; the batch is left for another try",
                    extra={"batch_id": self.batch.id, "lines": unrecorded},
                )
            return
        else:
            final, code, why = pb.BATCH_STATUS_COMPLETED, "", ""
        if code:
            done = await self._done(len(lines))
            unrun = [
                pb.BatchLineResult(
                    index=line.index,
                    custom_id=line.custom_id,
                    ok=False,
                    line=unrun_line(line.custom_id, code, why),
                )
                for line in lines
                if line.index not in done
            ]
            for start in range(0, len(unrun), RECORD_CHUNK):
                await self._record(unrun[start : start + RECORD_CHUNK])
        reasons = [LineError(code, why, 0)] if final == pb.BATCH_STATUS_FAILED else []
        await self._finish(final, reasons)

    async def _finish(self, status: pb.BatchStatus.ValueType, errors: list[LineError]) -> None:
        answer = await self.worker.batches.FinishBatch(
            pb.FinishBatchRequest(
                batch_id=self.batch.id,
                worker_id=self.worker.worker_id,
                status=status,
                errors=[
                    pb.BatchError(code=e.code, message=e.message, param=e.param, line=e.line)
                    for e in errors
                ],
            ),
            timeout=CALL_TIMEOUT_S * 6,
        )
        self._update(answer.batch)

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.lease_s / 3)
            try:
                answer = await self.worker.batches.RenewBatchLease(
                    pb.RenewBatchLeaseRequest(
                        batch_id=self.batch.id,
                        worker_id=self.worker.worker_id,
                        lease_seconds=round(self.settings.lease_s),
                    ),
                    timeout=CALL_TIMEOUT_S,
                )
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    self.lost = True
                    return
                log.warning("batch lease renewal failed: %s", error.code().name)
                continue
            self._update(answer.batch)
            try:  # the key as it is now: revoked or expired stops the batch
                self.principal = await self._principal()
            except ApiError as error:
                self.revoked = error
            except grpc.aio.AioRpcError as error:
                log.warning("batch key refresh failed: %s", error.code().name)

    async def _release(self) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError):
            await self.worker.batches.RenewBatchLease(
                pb.RenewBatchLeaseRequest(
                    batch_id=self.batch.id, worker_id=self.worker.worker_id, lease_seconds=0
                ),
                timeout=CALL_TIMEOUT_S,
            )


ACTIVE_STATUSES = (
    pb.BATCH_STATUS_VALIDATING,
    pb.BATCH_STATUS_IN_PROGRESS,
    pb.BATCH_STATUS_FINALIZING,
    pb.BATCH_STATUS_CANCELLING,
)
