"""Run extraction off the event loop, in worker processes with a time limit.

Parsing a hostile or huge PDF is CPU-bound and may never end; a thread could
neither be stopped nor keep the GIL away from the event loop. So extraction
runs in `services.files.extract_worker` processes: each does one job at a
time, one that runs past the deadline or dies is killed and replaced, and at
most `workers` run at once. A worker is started by the first job that needs it
and stays alive between jobs (pypdf already imported) until it has been idle
for `idle_s`: a gateway whose users upload no files keeps none (~15 MiB each).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import sys
import time
from collections.abc import Sequence
from typing import Any

import orjson

from services.files.extract import Extracted, ExtractError

WORKER_COMMAND = (sys.executable, "-m", "services.files.extract_worker")
_LENGTH = struct.Struct(">I")


class ExtractionTimeout(Exception):
    pass


class WorkerFailed(Exception):
    pass


class _Worker:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.idle_since = 0.0

    @classmethod
    async def start(cls, command: Sequence[str]) -> _Worker:
        process = await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        return cls(process)

    async def call(self, header: dict[str, Any], data: bytes) -> dict[str, Any]:
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None
        encoded = orjson.dumps(header)
        stdin.write(_LENGTH.pack(len(encoded)) + encoded + _LENGTH.pack(len(data)))
        stdin.write(data)
        await stdin.drain()
        (length,) = _LENGTH.unpack(await stdout.readexactly(_LENGTH.size))
        answer: dict[str, Any] = orjson.loads(await stdout.readexactly(length))
        return answer

    async def kill(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        await self.process.wait()


class Extractor:
    def __init__(
        self,
        timeout_s: float,
        workers: int,
        command: Sequence[str] = WORKER_COMMAND,
        idle_s: float = 60.0,
    ) -> None:
        self.timeout_s = timeout_s
        self.command = tuple(command)
        self.idle_s = idle_s
        self._slots = asyncio.Semaphore(workers)
        self._idle: list[_Worker] = []  # the most recently used last
        self._reaper: asyncio.Task[None] | None = None

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        idle, self._idle = self._idle, []
        for worker in idle:
            await worker.kill()

    def _park(self, worker: _Worker) -> None:
        worker.idle_since = time.monotonic()
        self._idle.append(worker)
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.create_task(self._retire_idle())

    async def _retire_idle(self) -> None:
        """Stop each worker idle for `idle_s`; jobs take the newest, so the
        oldest age out first when fewer are needed."""
        while self._idle:
            await asyncio.sleep(max(0.0, self._idle[0].idle_since + self.idle_s - time.monotonic()))
            now = time.monotonic()
            stale = [w for w in self._idle if now - w.idle_since >= self.idle_s]
            self._idle = [w for w in self._idle if w not in stale]
            for worker in stale:
                await worker.kill()

    async def run(self, filename: str, content_type: str, data: bytes) -> Extracted:
        """Raises ExtractError (about the file), ExtractionTimeout or WorkerFailed."""
        header = {"filename": filename, "content_type": content_type}
        async with self._slots:
            worker = self._idle.pop() if self._idle else await _Worker.start(self.command)
            try:
                answer = await asyncio.wait_for(worker.call(header, data), self.timeout_s)
            except BaseException as error:
                await asyncio.shield(worker.kill())
                if isinstance(error, TimeoutError):
                    raise ExtractionTimeout(filename) from None
                if isinstance(error, asyncio.IncompleteReadError | ConnectionError):
                    raise WorkerFailed(str(error)) from None
                raise
            self._park(worker)
        if "reason" in answer:
            raise ExtractError(str(answer["reason"]), str(answer["message"]))
        return Extracted(text=answer.get("text"), image_data_url=answer.get("image_data_url"))
