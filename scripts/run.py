"""`make run`: start auth, files, inference and edge as four processes.

A small supervisor: it picks loopback ports for the gRPC services (unless the
environment names them), waits until the edge is ready, prints where it
listens with a ready-to-paste curl line, and keeps watch. If one process dies,
the others are stopped and the exit says which and why. Ctrl-C / SIGTERM stops
all four cleanly.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from core.config import DEFAULT_ADDRESSES

SERVICES = ("auth", "files", "inference", "edge")
STOP_GRACE_S = 10.0
READY_TIMEOUT_S = 120.0
DEFAULT_MODEL = "smollm2-135m-instruct"


def _free(address: str) -> bool:
    host, _, port = address.rpartition(":")
    with socket.socket() as probe:
        try:
            probe.bind((host, int(port)))
        except OSError:
            return False
    return True


def _ephemeral_address() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def child_environment() -> dict[str, str]:
    env = dict(os.environ)
    for service, default in DEFAULT_ADDRESSES.items():
        name = f"AQUEDUCT_{service.upper()}_ADDR"
        if not env.get(name):
            env[name] = default if _free(default) else _ephemeral_address()
    env.setdefault("AQUEDUCT_DATA_DIR", "./var")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start(env: dict[str, str]) -> dict[str, subprocess.Popen[bytes]]:
    Path(env["AQUEDUCT_DATA_DIR"]).mkdir(parents=True, exist_ok=True)
    module = {"edge": "edge"}
    return {
        name: subprocess.Popen(
            [sys.executable, "-m", module.get(name, f"services.{name}")], env=env
        )
        for name in SERVICES
    }


def stop_all(children: dict[str, subprocess.Popen[bytes]]) -> None:
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for child in children.values():
        try:
            child.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _edge_ready(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/readyz", timeout=1) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def first_model(base: str, secret: str) -> str:
    """The first model the edge lists (the models file's order), for the curl line."""
    request = urllib.request.Request(
        f"{base}/v1/models", headers={"Authorization": f"Bearer {secret}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as answer:
            return str(json.load(answer)["data"][0]["id"])
    except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError):
        return DEFAULT_MODEL


def announce(env: dict[str, str], base: str, children: dict[str, subprocess.Popen[bytes]]) -> None:
    key_file = Path(env["AQUEDUCT_DATA_DIR"]) / "bootstrap-key"
    if env.get("AQUEDUCT_BOOTSTRAP_KEY"):
        key, secret = "$AQUEDUCT_BOOTSTRAP_KEY", env["AQUEDUCT_BOOTSTRAP_KEY"]
    else:
        key = f"$(cat {key_file})"
        secret = key_file.read_text().strip() if key_file.is_file() else ""
    model = first_model(base, secret)
    lines = [f"  edge       http  {base}/v1  (pid {children['edge'].pid})"] + [
        f"  {s:<10} grpc  {env[f'AQUEDUCT_{s.upper()}_ADDR']}  (pid {children[s].pid})"
        for s in ("auth", "files", "inference")
    ]
    listing = "\n".join(lines)
    print(
        f"\nAqueduct is ready.\n{listing}\n\n"
        f"Try it:\n  curl {base}/v1/chat/completions \\\n"
        f"    -H \"Authorization: Bearer {key}\" -H 'Content-Type: application/json' \\\n"
        f'    -d \'{{"model": "{model}", '
        '"messages": [{"role": "user", "content": "Say hello"}]}\'\n',
        flush=True,
    )


def supervise(children: dict[str, subprocess.Popen[bytes]], env: dict[str, str]) -> int:
    host = env.get("AQUEDUCT_HTTP_HOST", "127.0.0.1")
    base = f"http://{host}:{env.get('AQUEDUCT_HTTP_PORT', '8000')}"
    stopping = False

    def request_stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    started, announced = time.monotonic(), False
    while not stopping:
        for name, child in children.items():
            code = child.poll()
            if code is not None:
                why = f"signal {-code}" if code < 0 else f"exit code {code}"
                print(
                    f"aqueduct: {name} stopped unexpectedly ({why}); stopping the others.",
                    file=sys.stderr,
                    flush=True,
                )
                stop_all(children)
                return 1
        if not announced:
            if _edge_ready(base):
                announce(env, base, children)
                announced = True
            elif time.monotonic() - started > READY_TIMEOUT_S:
                print(
                    f"aqueduct: not ready after {READY_TIMEOUT_S:.0f} s; see {base}/readyz",
                    file=sys.stderr,
                    flush=True,
                )
                started = float("inf")
        time.sleep(0.2)
    print("aqueduct: stopping…", flush=True)
    stop_all(children)
    return 0


def main() -> None:
    env = child_environment()
    children = start(env)
    sys.exit(supervise(children, env))


if __name__ == "__main__":
    main()
