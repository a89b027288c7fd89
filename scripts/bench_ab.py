"""Two Aqueduct trees side by side: gateway CPU per request and requests/s, old vs new.

    python -m scripts.bench_ab OLD_TREE NEW_TREE [--rounds 3] [--duration 8] [--traced]

Each tree is a checkout with its own `.venv` (`make setup` in it). Both gateways
(all four processes each) are pinned to CPU 1, the mock upstream and wrk to CPU 0,
and each (mode, connections) cell runs old and new back to back, order swapped
every round, so that a machine whose speed drifts treats both alike. CPU per
request is the gateway processes' user+system time over the requests wrk counted.
Requests use a key with limits high enough never to bite (every request reserves
and settles, as real keys do). `--traced` adds a third gateway, the new tree with
tracing on, exporting every span to a local OTLP receiver (scripts/otlp_sink.py).
Bounded: every wrk run has a duration, every wait a timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "shared" / "bench"
MOCK_PORT = 18001
SINK_PORT = 18317
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Gateway:
    name: str
    tree: Path
    port: int
    env: dict[str, str] = field(default_factory=dict)
    pinned: bool = True  # on CPU 1; False: anywhere (scripts/bench_workers.py)
    process: subprocess.Popen[bytes] | None = None
    key: str = ""
    results: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    # cell -> CPU ms per request of each process, one dict a run
    by_process: dict[str, list[dict[str, float]]] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, work: Path, offset: int) -> None:
        data = work / self.name
        data.mkdir()
        models = data / "models.yaml"
        models.write_text(
            "models:\n  - name: mock\n    backend: openai\n"
            f'    upstreams: [{{url: "http://127.0.0.1:{MOCK_PORT}/v1", api_key: bench}}]\n'
        )
        admin = "sk-aq-bench-" + secrets.token_urlsafe(24)
        env = {
            **os.environ,
            "AQUEDUCT_DATA_DIR": str(data),
            "AQUEDUCT_MODELS_CONFIG": str(models),
            "AQUEDUCT_BOOTSTRAP_KEY": admin,
            "AQUEDUCT_HTTP_PORT": str(self.port),
            "AQUEDUCT_LOG_LEVEL": "WARNING",
            **self.env,
            **{
                f"AQUEDUCT_{s}_ADDR": f"127.0.0.1:{51051 + offset * 10 + i}"
                for i, s in enumerate(("AUTH", "FILES", "INFERENCE"))
            },
        }
        self.process = subprocess.Popen(
            [
                *(["taskset", "-c", "1"] if self.pinned else []),
                str(self.tree / ".venv/bin/python"),
                "-m",
                "scripts.run",
            ],
            cwd=self.tree,
            env=env,
            stdout=(data / "run.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        wait_until(lambda: _get(f"{self.base}/readyz") == 200, 120, f"{self.name} ready")
        self.key = create_limited_key(self.base, admin)

    def cpu_s(self) -> dict[str, float]:
        """User+system time of the supervisor's children so far, by program."""
        assert self.process is not None
        found: dict[str, float] = {}
        for pid in _children(self.process.pid):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            module = command[command.index(b"-m") + 1].decode() if b"-m" in command else str(pid)
            name = module.removeprefix("services.").split(".")[0]
            # utime + stime, summed over the workers of one program (edge-1, edge-2…)
            found[name] = found.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / TICKS
        return found

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants (the files service's extraction worker
    included), as the harness counts them."""
    found, at = [root], 0
    while at < len(found):
        found.extend(_children(found[at]))
        at += 1
    return found


def memory_by_process(root: int) -> dict[str, tuple[float, float]]:
    """(RSS, PSS) in MiB of `root` (the supervisor) and each of its descendants, by
    module. RSS counts a library's pages in every process that maps them (what the
    harness sums); PSS shares them out, so its sum is what the machine spends."""
    found: dict[str, tuple[float, float]] = {}
    for pid in process_tree(root):
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        module = command[command.index(b"-m") + 1].decode() if b"-m" in command else str(pid)
        name = module.removeprefix("services.").removeprefix("scripts.")
        kib = {x.split(":")[0]: int(x.split()[1]) for x in rollup.splitlines()[1:]}
        rss, pss = found.get(name, (0.0, 0.0))
        found[name] = (rss + kib["Rss"] / 1024, pss + kib["Pss"] / 1024)
    return found


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return int(answer.status)
    except OSError:
        return 0


def create_limited_key(base: str, admin: str) -> str:
    """An ordinary key (through the admin API at `base`) whose rpm, token and
    concurrency limits are far above anything a bench sends: every request it
    makes reserves quota at auth and settles it, as real keys do, and none is refused."""
    body = json.dumps(
        {
            "name": "bench",
            "limits": {
                "rpm": 10_000_000,
                "input_tpm": 1_000_000_000,
                "output_tpm": 1_000_000_000,
                "max_concurrent": 100_000,
            },
        }
    ).encode()
    request = urllib.request.Request(
        f"{base}/v1/admin/keys",
        data=body,
        headers={"Authorization": f"Bearer {admin}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return str(json.load(answer)["key"])


def start_mock(python: Path) -> subprocess.Popen[bytes]:
    """The harness's fast mock upstream on MOCK_PORT, pinned to CPU 0 (the gateways get CPU 1)."""
    command = [str(python), str(BENCH / "mock_upstream.py"), "--port", str(MOCK_PORT)]
    return subprocess.Popen(
        ["taskset", "-c", "0", *command], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def wait_until(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def wrk(
    gateway: Gateway, conns: int, duration: float, stream: bool
) -> tuple[float, float, dict[str, float]]:
    """(requests/s, gateway CPU ms per request, that CPU by process) of one timed run."""
    env = {
        **os.environ,
        "BENCH_MODEL": "mock",
        "BENCH_KEY": gateway.key,
        "BENCH_STREAM": "1" if stream else "0",
    }
    command = [
        "taskset", "-c", "0", "wrk", f"-t{min(conns, 2)}", f"-c{conns}", f"-d{round(duration)}s",
        "-s", str(BENCH / "chat.lua"), f"{gateway.base}/v1/chat/completions",
    ]  # fmt: skip
    before = gateway.cpu_s()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=duration + 60)
    after = gateway.cpu_s()
    line = next((x for x in done.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if line is None:
        raise SystemExit(f"{gateway.name}: wrk gave no result:\n{done.stdout}\n{done.stderr}")
    result = json.loads(line[len("WRKJSON ") :])
    errors = sum(result[k] for k in ("connect_err", "read_err", "status_err", "timeout_err"))
    if errors:
        raise SystemExit(f"{gateway.name}: {errors} errors in wrk run: {result}")
    requests = max(result["requests"], 1)
    spent = {name: 1000 * (t - before.get(name, 0.0)) / requests for name, t in after.items()}
    return result["requests"] / (result["duration_us"] / 1e6), sum(spent.values()), spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--conns", default="1,16")
    parser.add_argument("--traced", action="store_true")
    parser.add_argument(
        "--also",
        type=Path,
        action="append",
        default=[],
        help="another tree to compare with old (e.g. a commit in between), named after its folder",
    )
    args = parser.parse_args()
    gateways = [
        Gateway("old", args.old.resolve(), 18101),
        Gateway("new", args.new.resolve(), 18102),
        *(Gateway(t.name, t.resolve(), 18104 + i) for i, t in enumerate(args.also)),
    ]
    python = args.new.resolve() / ".venv/bin/python"
    helpers = []
    if args.traced:
        endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{SINK_PORT}"}
        gateways.append(Gateway("traced", args.new.resolve(), 18103, endpoint))
        sink = ["-m", "scripts.otlp_sink", "--port", str(SINK_PORT)]
        helpers.append(
            subprocess.Popen(
                ["taskset", "-c", "0", str(python), *sink],
                cwd=args.new.resolve(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    mock = start_mock(python)
    cells = [(c, s) for s in (False, True) for c in map(int, args.conns.split(","))]
    try:
        with tempfile.TemporaryDirectory(prefix="aqueduct-ab-") as work:
            for offset, gateway in enumerate(gateways):
                gateway.start(Path(work), offset)
            for gateway in gateways:  # warm up both
                for conns, stream in cells:
                    wrk(gateway, conns, 2, stream)
            for round_ in range(args.rounds):
                for conns, stream in cells:
                    order = gateways if round_ % 2 == 0 else gateways[::-1]
                    for gateway in order:
                        cell = f"{'stream' if stream else 'json'} c={conns}"
                        rps, cpu, spent = wrk(gateway, conns, args.duration, stream)
                        gateway.results.setdefault(cell, []).append((rps, cpu))
                        gateway.by_process.setdefault(cell, []).append(spent)
    finally:
        for gateway in gateways:
            gateway.stop()
        for process in [mock, *helpers]:
            process.terminate()
    columns = " | ".join(f"{g.name} req/s | {g.name} CPU ms/req" for g in gateways)
    ratios = " | ".join(f"CPU {g.name}/old" for g in gateways[1:])
    print(f"| cell | {columns} | {ratios} |")
    print("|---|" + "---:|" * (3 * len(gateways) - 1))
    for cell in gateways[0].results:
        row = []
        cpus = []
        for gateway in gateways:
            rps = statistics.median(r for r, _ in gateway.results[cell])
            cpu = statistics.median(c for _, c in gateway.results[cell])
            cpus.append(cpu)
            row += [f"{rps:.0f}", f"{cpu:.2f}"]
        row += [f"{cpu / cpus[0]:.3f}" for cpu in cpus[1:]]
        print(f"| {cell} | {' | '.join(row)} |")
    print("\nCPU ms per request by process (medians):\n")
    names = sorted({n for g in gateways for runs in g.by_process.values() for r in runs for n in r})
    print(f"| cell | gateway | {' | '.join(names)} |")
    print("|---|---|" + "---:|" * len(names))
    for cell in gateways[0].by_process:
        for gateway in gateways:
            runs = gateway.by_process[cell]
            shares = [statistics.median(r.get(n, 0.0) for r in runs) for n in names]
            print(f"| {cell} | {gateway.name} | {' | '.join(f'{x:.2f}' for x in shares)} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
