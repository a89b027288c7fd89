"""One tree with different worker counts, unpinned: requests/s and gateway CPU per request.

    python -m scripts.bench_workers [--var AQUEDUCT_INFERENCE_WORKERS] [--counts 1,2]
                                    [--rounds 3] [--duration 8] [--conns 16,64]

The gateways (all their processes) float over every CPU; the mock upstream and
wrk stay on CPU 0, as in scripts/bench_ab.py, whose pieces this uses. Each
(mode, connections) cell runs every count back to back, order reversed every
round, so a machine whose speed drifts treats them alike. Other worker counts
stay at 1 unless set in the environment. Bounded: every wrk run has a duration,
every wait a timeout.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from scripts.bench_ab import Gateway, start_mock, wait_until, wrk

TREE = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--var", default="AQUEDUCT_INFERENCE_WORKERS")
    parser.add_argument("--counts", default="1,2")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--conns", default="16,64")
    args = parser.parse_args()
    fixed = {"AQUEDUCT_EDGE_WORKERS": "1", "AQUEDUCT_INFERENCE_WORKERS": "1"}
    gateways = [
        Gateway(f"{args.var}={n}", TREE, 18121 + i, {**fixed, args.var: n}, pinned=False)
        for i, n in enumerate(args.counts.split(","))
    ]
    cells = [(c, s) for s in (False, True) for c in map(int, args.conns.split(","))]
    mock = start_mock(TREE / ".venv/bin/python")
    try:
        with tempfile.TemporaryDirectory(prefix="aqueduct-workers-") as work:
            for offset, gateway in enumerate(gateways):
                gateway.start(Path(work), offset)
                log = Path(work) / gateway.name / "run.log"  # every worker ready, not just one
                wait_until(lambda log=log: b"is ready" in log.read_bytes(), 120, gateway.name)
            for gateway in gateways:  # warm up
                for conns, stream in cells:
                    wrk(gateway, conns, 2, stream)
            try:
                for round_ in range(args.rounds):
                    for conns, stream in cells:
                        for gateway in gateways if round_ % 2 == 0 else gateways[::-1]:
                            cell = f"{'stream' if stream else 'json'} c={conns}"
                            rps, cpu, _ = wrk(gateway, conns, args.duration, stream)
                            gateway.results.setdefault(cell, []).append((rps, cpu))
            except SystemExit:  # a failed run: what the gateways said, before it is deleted
                for gateway in gateways:
                    said = (Path(work) / gateway.name / "run.log").read_text()
                    print(f"--- {gateway.name}\n{said[-3000:]}")
                raise
    finally:
        for gateway in gateways:
            gateway.stop()
        mock.terminate()
    print("| cell | " + " | ".join(f"{g.name} req/s (runs) | CPU ms/req" for g in gateways) + " |")
    print("|---|" + "---:|" * (2 * len(gateways)))
    for cell in gateways[0].results:
        row = []
        for gateway in gateways:
            runs = gateway.results[cell]
            rps = statistics.median(r for r, _ in runs)
            every = ", ".join(f"{r:.0f}" for r, _ in runs)
            row += [f"{rps:.0f} ({every})", f"{statistics.median(c for _, c in runs):.2f}"]
        print(f"| {cell} | {' | '.join(row)} |")


if __name__ == "__main__":
    main()
