"""Idle memory: the resident memory of every Aqueduct process, as `make bench` samples it.

    python -m scripts.bench_idle [--runs 3] [--settle-s 5] [--models FILE] [--tree DIR]

Starts Aqueduct as scripts/bench.sh does (the supervisor `python -m scripts.run`
pinned to CPU 1, a fresh data folder, the bench's models file of two `openai`
upstreams, log level WARNING) beside the harness's mock upstream, sends what
the harness sends before it samples idle memory (one short chat, one JSON and
one streamed chat), waits `--settle-s` and prints the resident memory of each
process (the files service's extraction worker included, as the harness counts
it) and the total, RSS and PSS (RSS counts shared library pages once per process);
then stops it, starts it again on the same data folder (a restart: the
database is already at its newest revision) and samples again. `--runs` repeats
all of it with a new folder each time and prints the medians. `--models` starts
with another models file instead (its requests go to the first model it lists:
list the bench's `mock` first and add the bundled model after it to see what
the bundled model costs when loaded). `--tree` measures another
checkout (with its own `.venv`), for a before/after on the same machine.
Bounded: every wait has a timeout, every run is stopped.

RSS counts the pages of each shared library a process has mapped, and how many
the kernel maps around each one it touches depends on how the file sits in the
page cache (a venv installed a minute ago, its files just written, measured
18 MiB above the same venv read back from disk: 281 against 263). `--cold-libs`
drops the tree's shared libraries from the page cache before each start
(posix_fadvise DONTNEED; nothing else is touched), so two trees, or two
sessions, compare from the same state.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from scripts.bench_ab import BENCH, memory_by_process, wait_until

MOCK_PORT, MOCK_SLOW_PORT, HTTP_PORT = 18171, 18172, 18170
BENCH_MODELS = f"""models:
  - name: mock
    backend: openai
    upstreams: [{{url: "http://127.0.0.1:{MOCK_PORT}/v1", api_key: bench}}]
  - name: mock-slow
    backend: openai
    upstreams: [{{url: "http://127.0.0.1:{MOCK_SLOW_PORT}/v1", api_key: bench}}]
"""
PROMPT = "Say hello. This is a gateway benchmark request."


def post(url: str, key: str, body: dict[str, object]) -> bytes:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as answer:
        return bytes(answer.read())


def first_model(base: str, key: str) -> str:
    request = urllib.request.Request(
        f"{base}/v1/models", headers={"Authorization": f"Bearer {key}"}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return str(json.load(answer)["data"][0]["id"])


def drop_cached_libraries(tree: Path) -> None:
    """The tree's shared libraries out of the page cache (see `--cold-libs`)."""
    for library in (tree / ".venv").rglob("*.so*"):
        if library.is_file() and not library.is_symlink():
            descriptor = os.open(library, os.O_RDONLY)
            try:
                os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(descriptor)


def measure(
    tree: Path, data: Path, models: Path, settle_s: float, cold_libs: bool = False
) -> dict[str, tuple[float, float]]:
    """Start the gateway on `data`, send the harness's requests, settle, sample, stop."""
    if cold_libs:
        drop_cached_libraries(tree)
    key = "sk-aq-bench-" + secrets.token_urlsafe(24)
    env = {
        **os.environ,
        "AQUEDUCT_DATA_DIR": str(data),
        "AQUEDUCT_MODELS_CONFIG": str(models),
        "AQUEDUCT_BOOTSTRAP_KEY": key,
        "AQUEDUCT_HTTP_PORT": str(HTTP_PORT),
        "AQUEDUCT_LOG_LEVEL": "WARNING",
    }
    base = f"http://127.0.0.1:{HTTP_PORT}"
    process = subprocess.Popen(
        ["taskset", "-c", "1", str(tree / ".venv/bin/python"), "-m", "scripts.run"],
        cwd=tree,
        env=env,
        stdout=(data / "run.log").open("ab"),
        stderr=subprocess.STDOUT,
    )
    try:
        model = ""

        def chat_answers() -> bool:
            nonlocal model
            try:
                model = model or first_model(base, key)
                post(f"{base}/v1/chat/completions", key, {"model": model, "max_tokens": 8,
                     "messages": [{"role": "user", "content": "ping"}]})  # fmt: skip
            except OSError:
                return False
            return True

        wait_until(chat_answers, 180, "the gateway to answer a chat")
        body = {"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": PROMPT}]}
        post(f"{base}/v1/chat/completions", key, body)
        post(f"{base}/v1/chat/completions", key, {**body, "stream": True,
             "stream_options": {"include_usage": True}})  # fmt: skip
        time.sleep(settle_s)
        return memory_by_process(process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start_mocks(python: Path) -> list[subprocess.Popen[bytes]]:
    """The harness's two mock upstreams (fast, and 10 ms between events), on CPU 0."""
    mocks = []
    for port, delay in ((MOCK_PORT, 0), (MOCK_SLOW_PORT, 10)):
        command = [str(python), str(BENCH / "mock_upstream.py"), "--port", str(port),
                   "--chunk-delay-ms", str(delay)]  # fmt: skip
        mocks.append(
            subprocess.Popen(
                ["taskset", "-c", "0", *command],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    return mocks


def table(title: str, runs: list[dict[str, tuple[float, float]]]) -> None:
    names = sorted({name for run in runs for name in run})
    print(f"{title} (MiB; median of {len(runs)} runs; RSS of each run)")
    print(f"  {'process':<22} {'RSS':>6} {'PSS':>6}")
    for name in [*names, "total"]:
        pairs = [
            tuple(map(sum, zip(*run.values(), strict=True))) if name == "total" else run[name]
            for run in runs
            if name == "total" or name in run
        ]
        rss = statistics.median(p[0] for p in pairs)
        pss = statistics.median(p[1] for p in pairs)
        each = " ".join(f"{p[0]:6.1f}" for p in pairs)
        print(f"  {name:<22} {rss:6.1f} {pss:6.1f}   [{each}]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--settle-s", type=float, default=5.0)
    parser.add_argument("--models", type=Path, help="a models file (default: the bench's)")
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument(
        "--cold-libs", action="store_true", help="drop the tree's libraries from the page cache"
    )
    args = parser.parse_args()
    tree = args.tree.resolve()
    mocks = start_mocks(tree / ".venv/bin/python")
    fresh: list[dict[str, tuple[float, float]]] = []
    restarted: list[dict[str, tuple[float, float]]] = []
    try:
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory(prefix="aqueduct-idle-") as work:
                data = Path(work)
                models = args.models.resolve() if args.models else data / "models.yaml"
                if not args.models:
                    models.write_text(BENCH_MODELS)
                fresh.append(measure(tree, data, models, args.settle_s, args.cold_libs))
                restarted.append(measure(tree, data, models, args.settle_s, args.cold_libs))
    finally:
        for mock in mocks:
            mock.terminate()
    cold = "; libraries dropped from the page cache before each start" if args.cold_libs else ""
    print(f"tree {tree}; models {args.models or 'the bench models file'}{cold}")
    table("idle RSS, fresh data folder", fresh)
    table("idle RSS, restarted on the same folder", restarted)


if __name__ == "__main__":
    main()
