"""Settles per second through one auth process, as edges send them: each caller
keeps one SettleQuotas call of `--batch` settlements in flight (an edge batches
what queued while its previous call was out). Keys without limits, so what is
measured is the ledger path; `--limited` adds in-process counters.

    .venv/bin/python -m scripts.bench_settles                      # this tree
    .venv/bin/python -m scripts.bench_settles --tree ../other     # another checkout
    .venv/bin/python -m scripts.bench_settles --callers 4 --batch 50
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import grpc
from aqueduct.auth.v1 import auth_pb2 as pb
from aqueduct.auth.v1 import auth_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def settlement(limited: bool) -> pb.Settlement:
    limits = pb.Limits(max_concurrent=1_000_000) if limited else pb.Limits()
    return pb.Settlement(
        reservation=pb.Reservation(
            id=uuid.uuid4().hex, key_id="bench", team="t", key_limits=limits, input_tokens=10
        ),
        usage=pb.UsageRecord(
            request_id=uuid.uuid4().hex,
            key_id="bench",
            team="t",
            model="m",
            input_tokens=10,
            output_tokens=5,
            status=200,
            created_at=time.time(),
        ),
    )


async def wait_serving(address: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            with contextlib.suppress(grpc.aio.AioRpcError):
                answer = await stub.Check(  # type: ignore[attr-defined]
                    health_pb2.HealthCheckRequest(), timeout=1
                )
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            await asyncio.sleep(0.1)
    raise SystemExit(f"auth on {address} did not serve within {timeout} s")


async def drive(address: str, args: argparse.Namespace) -> tuple[int, float]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        done = 0
        stop_at = time.monotonic() + args.seconds

        async def caller() -> None:
            nonlocal done
            while time.monotonic() < stop_at:
                batch = [settlement(args.limited) for _ in range(args.batch)]
                await stub.SettleQuotas(pb.SettleQuotasRequest(settles=batch), timeout=30)
                done += len(batch)

        await stub.SettleQuotas(pb.SettleQuotasRequest(settles=[settlement(args.limited)]))
        started = time.monotonic()
        await asyncio.gather(*(caller() for _ in range(args.callers)))
        return done, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, default=REPO, help="checkout whose auth to run")
    parser.add_argument("--callers", type=int, default=16)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--limited", action="store_true", help="settle in-process counters too")
    parser.add_argument("--database-url", help="default: SQLite in a temporary folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data:
        database = args.database_url or f"sqlite:///{data}/aqueduct.db"
        address = f"127.0.0.1:{free_port()}"
        env = {
            **os.environ,
            "AQUEDUCT_DATA_DIR": data,
            "AQUEDUCT_DATABASE_URL": database,
            "AQUEDUCT_AUTH_ADDR": address,
            "AQUEDUCT_BOOTSTRAP_KEY": "sk-aq-bench-" + "b" * 40,
            "AQUEDUCT_LOG_LEVEL": "WARNING",
        }
        env.pop("AQUEDUCT_REDIS_URL", None)
        auth = subprocess.Popen(
            [sys.executable, "-m", "services.auth"], cwd=args.tree, env=env
        )  # cwd first on sys.path: that tree's services
        try:
            asyncio.run(wait_serving(address, 60))
            settled, elapsed = asyncio.run(drive(address, args))
        finally:
            auth.terminate()
            auth.wait(30)
    print(
        f"{args.tree}: {settled / elapsed:,.0f} settles/s "
        f"({args.callers} callers x {args.batch} per call, {elapsed:.1f} s)"
    )


if __name__ == "__main__":
    main()
