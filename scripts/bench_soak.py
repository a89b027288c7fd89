"""Memory under a steady load: is the gateway's RSS flat over a long run?

    python -m scripts.bench_soak [--minutes 10] [--rate R] [--sample-s 10]

Starts the fast mock upstream and Aqueduct (`make run`'s supervisor, pinned as
scripts/bench_ab.py pins it, with a limited key so that every request reserves
and settles), measures its JSON chat throughput with wrk for a few seconds,
then sends requests at a fixed rate (by default half that throughput, as
issue #19 asks) for `--minutes`, sampling the resident memory of every
Aqueduct process. Prints the samples and the drift: the last minute's mean
against the first minute's (after warm-up). Bounded: the soak stops after
`--minutes`, every wait has a timeout, at most MAX_IN_FLIGHT requests run at once.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from scripts.bench_ab import Gateway, memory_by_process, start_mock, wrk

MAX_IN_FLIGHT = 64
BODY = {"model": "mock", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 16}


def rss_by_process(gateway: Gateway) -> dict[str, float]:
    """Resident memory (MiB) of the supervisor and each descendant, by module name."""
    assert gateway.process is not None
    return {name: rss for name, (rss, _) in memory_by_process(gateway.process.pid).items()}


def rss_mib(gateway: Gateway) -> float:
    return sum(rss_by_process(gateway).values())


async def soak(gateway: Gateway, rate: float, seconds: float, sample_s: float) -> dict[str, object]:
    """Requests at `rate` per second for `seconds`; RSS every `sample_s`."""
    samples: list[tuple[float, float]] = []
    sent = failed = 0
    gate = asyncio.Semaphore(MAX_IN_FLIGHT)
    headers = {"Authorization": f"Bearer {gateway.key}"}
    limits = httpx.Limits(max_connections=MAX_IN_FLIGHT, max_keepalive_connections=MAX_IN_FLIGHT)
    async with httpx.AsyncClient(base_url=gateway.base, limits=limits, timeout=30) as client:

        async def one() -> None:
            nonlocal failed
            try:
                answer = await client.post("/v1/chat/completions", json=BODY, headers=headers)
                failed += answer.status_code != 200
            except httpx.HTTPError:
                failed += 1
            finally:
                gate.release()

        tasks: set[asyncio.Task[None]] = set()
        started = time.monotonic()
        next_sample = started
        while (now := time.monotonic()) - started < seconds:
            if now >= next_sample:
                samples.append((now - started, rss_mib(gateway)))
                next_sample += sample_s
            due = started + sent / rate
            if due > now:
                await asyncio.sleep(min(due - now, max(0.0, next_sample - now)))
                continue
            await gate.acquire()  # past MAX_IN_FLIGHT the rate falls behind, never piles up
            task = asyncio.create_task(one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
        if tasks:
            await asyncio.wait(tasks, timeout=30)
        samples.append((time.monotonic() - started, rss_mib(gateway)))
    return {"samples": samples, "sent": sent, "failed": failed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, help="requests/s (default: half the measured)")
    parser.add_argument("--sample-s", type=float, default=10.0)
    args = parser.parse_args()
    tree = Path(__file__).resolve().parents[1]
    mock = start_mock(tree / ".venv/bin/python")
    gateway = Gateway("soak", tree, 18151)
    try:
        with tempfile.TemporaryDirectory(prefix="aqueduct-soak-") as work:
            gateway.start(Path(work), 7)
            idle = rss_mib(gateway)
            measured, _, _ = wrk(gateway, 16, 5, False)
            rate = args.rate or measured / 2
            print(
                f"idle RSS {idle:.1f} MiB; JSON c=16: {measured:.0f} req/s; soaking at {rate:.0f}/s"
            )
            before = rss_by_process(gateway)
            result = asyncio.run(soak(gateway, rate, args.minutes * 60, args.sample_s))
            after = rss_by_process(gateway)
    finally:
        gateway.stop()
        mock.terminate()
    for name in sorted(after):
        print(f"  {name:<20} {before.get(name, 0.0):7.1f} -> {after[name]:7.1f} MiB")
    samples = result["samples"]
    assert isinstance(samples, list)
    for at, mib in samples:
        print(f"  {at:7.1f} s  {mib:7.1f} MiB")
    first = [m for t, m in samples if 60 <= t < 120] or [samples[0][1]]
    last = [m for t, m in samples if t >= samples[-1][0] - 60]
    drift = statistics.mean(last) - statistics.mean(first)
    low, high = min(m for _, m in samples), max(m for _, m in samples)
    print(
        f"sent {result['sent']} requests, {result['failed']} failed; "
        f"RSS {low:.1f}..{high:.1f} MiB; last minute vs second minute: {drift:+.1f} MiB "
        f"({'flat' if abs(drift) <= 10 else 'NOT flat'} within ±10 MiB)"
    )


if __name__ == "__main__":
    main()
