"""Batch benchmark (issue #15): a chat batch against the fast mock upstream.

    .venv/bin/python -m scripts.bench_batch                 # 1,000 lines, 200 live requests
    .venv/bin/python -m scripts.bench_batch --lines 5000 --concurrency 8

Starts the mock upstream (../shared/bench/mock_upstream.py) and Aqueduct's four
processes as `make run` does (scripts/run.py), on loopback ports with a
temporary data directory, and a key with limits high enough never to bite (so
every line and live request reserves and settles, as real keys do). Then:

1. live p50 alone: `--live` non-streamed chat requests, one at a time;
2. the batch: upload the JSONL and create the batch with the official SDK, and
   while it runs send live requests one at a time again; lines per second
   (create to completed, and in_progress to completed, as the batch's own
   timestamps are whole seconds: measured here by polling every 50 ms) and
   live p50 while the batch was in progress.

Not a test and no speed claim by itself: figures depend on the machine and on
what else runs on it. Bounded: every wait has a timeout, the batch `--timeout`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import httpx
import openai

from scripts.bench_ab import wait_until

REPO = Path(__file__).resolve().parent.parent
MOCK = REPO.parent / "shared" / "bench" / "mock_upstream.py"
FINAL = {"completed", "failed", "cancelled", "expired"}
LIVE_BODY = {"model": "mock", "messages": [{"role": "user", "content": "live"}], "max_tokens": 16}


def free_address() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return int(answer.status) == 200
    except OSError:
        return False


def start_gateway(
    data: Path, mock_url: str, concurrency: int
) -> tuple[subprocess.Popen[bytes], str, str]:
    """`make run`'s processes; the edge's URL and a key with limits that never bite."""
    models = data / "models.yaml"
    models.write_text(
        f'models:\n  - name: mock\n    backend: openai\n    upstreams: [{{url: "{mock_url}"}}]\n'
    )
    port = free_address().rpartition(":")[2]
    admin = "sk-aq-bench-" + secrets.token_urlsafe(24)
    env = {
        **os.environ,
        "AQUEDUCT_DATA_DIR": str(data),
        "AQUEDUCT_MODELS_CONFIG": str(models),
        "AQUEDUCT_BOOTSTRAP_KEY": admin,
        "AQUEDUCT_HTTP_PORT": port,
        "AQUEDUCT_LOG_LEVEL": "WARNING",
        "AQUEDUCT_BATCH_CONCURRENCY": str(concurrency),
        "AQUEDUCT_BATCH_POLL_S": "0.2",
        **{
            f"AQUEDUCT_{service}_{kind}": free_address()
            for service in ("AUTH", "FILES", "INFERENCE")
            for kind in ("ADDR", "METRICS_ADDR")
        },
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "scripts.run"],
        cwd=REPO,
        env=env,
        stdout=(data / "run.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: ready(f"{base}/readyz") or process.poll() is not None, 120, "the gateway")
    if process.poll() is not None:
        raise SystemExit(f"the gateway exited; see {data / 'run.log'}")
    key = httpx.post(
        f"{base}/v1/admin/keys",
        headers={"authorization": f"Bearer {admin}"},
        json={
            "name": "bench",
            "limits": {
                "rpm": 10_000_000,
                "input_tpm": 1_000_000_000,
                "output_tpm": 1_000_000_000,
                "max_concurrent": 100_000,
            },
        },
        timeout=10,
    )
    key.raise_for_status()
    return process, base, str(key.json()["key"])


def live_requests(
    client: httpx.Client, count: int | None, stop: threading.Event
) -> list[tuple[float, float]]:
    """(start, seconds) of live chat requests sent one at a time, `count` of
    them or until `stop` is set."""
    timings: list[tuple[float, float]] = []
    while not stop.is_set() and (count is None or len(timings) < count):
        start = time.monotonic()
        answer = client.post("/v1/chat/completions", json=LIVE_BODY)
        answer.raise_for_status()
        timings.append((start, time.monotonic() - start))
    return timings


def p50_ms(timings: list[tuple[float, float]]) -> float:
    return statistics.median(seconds for _, seconds in timings) * 1000 if timings else float("nan")


def run(base: str, key: str, lines: int, live: int, timeout: float) -> None:
    http = httpx.Client(base_url=base, headers={"authorization": f"Bearer {key}"}, timeout=30)
    sdk = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=60)
    live_requests(http, 20, threading.Event())  # warm up
    alone = live_requests(http, live, threading.Event())

    content = b"".join(
        json.dumps(
            {
                "custom_id": f"line-{n}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": "mock",
                    "messages": [{"role": "user", "content": f"line {n}"}],
                    "max_tokens": 16,
                },
            }
        ).encode()
        + b"\n"
        for n in range(lines)
    )
    file_id = sdk.files.create(file=("bench.jsonl", io.BytesIO(content)), purpose="batch").id
    stop = threading.Event()
    during: list[tuple[float, float]] = []
    caller = threading.Thread(target=lambda: during.extend(live_requests(http, None, stop)))
    created_at = time.monotonic()
    batch = sdk.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    caller.start()
    in_progress_at: float | None = None
    deadline = created_at + timeout
    try:
        while batch.status not in FINAL:
            if time.monotonic() > deadline:
                sdk.batches.cancel(batch.id)
                raise SystemExit(f"the batch did not finish in {timeout:.0f} s: {batch}")
            time.sleep(0.05)
            batch = sdk.batches.retrieve(batch.id)
            if in_progress_at is None and batch.status == "in_progress":
                in_progress_at = time.monotonic()
        done_at = time.monotonic()
    finally:
        stop.set()
        caller.join(60)
    counts = batch.request_counts
    assert counts is not None
    if batch.status != "completed" or counts.completed != lines:
        raise SystemExit(f"the batch did not complete every line: {batch}")
    start = in_progress_at or created_at
    while_running = [(s, d) for s, d in during if start <= s and s + d <= done_at]
    print(f"batch: {lines} chat lines, status {batch.status}, {counts.failed} failed")
    print(
        f"  lines/s: {lines / (done_at - created_at):.1f} (create to completed, "
        f"{done_at - created_at:.2f} s), {lines / (done_at - start):.1f} (in_progress to "
        f"completed, {done_at - start:.2f} s)"
    )
    print(f"live p50 alone:             {p50_ms(alone):.2f} ms ({len(alone)} requests)")
    print(
        f"live p50 while batch runs:  {p50_ms(while_running):.2f} ms "
        f"({len(while_running)} requests)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=1000)
    parser.add_argument("--live", type=int, default=200, help="live requests measured alone")
    parser.add_argument("--concurrency", type=int, default=4, help="lines of the batch at once")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds for the batch")
    args = parser.parse_args()
    mock_address = free_address()
    mock = subprocess.Popen(
        [sys.executable, str(MOCK), "--port", mock_address.rpartition(":")[2]],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    gateway: subprocess.Popen[bytes] | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="aqueduct-bench-batch-") as work:
            wait_until(lambda: ready(f"http://{mock_address}/health"), 30, "the mock upstream")
            gateway, base, key = start_gateway(
                Path(work), f"http://{mock_address}/v1", args.concurrency
            )
            run(base, key, args.lines, args.live, args.timeout)
    finally:
        if gateway is not None and gateway.poll() is None:
            gateway.send_signal(signal.SIGTERM)
            try:
                gateway.wait(60)
            except subprocess.TimeoutExpired:
                gateway.kill()
        mock.terminate()
        mock.wait(10)


if __name__ == "__main__":
    main()
