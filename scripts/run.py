"""`make run`: start auth, files, inference and edge as four processes.

A small supervisor: it picks loopback ports for the gRPC services (unless the
environment names them), waits until the edge is ready, prints where it
listens with a ready-to-paste curl line, and keeps watch. A process that dies
is restarted after a backoff (and the output says so); a configuration error,
or more than MAX_CRASHES crashes within CRASH_WINDOW_S, stops everything. Ctrl-C
/ SIGTERM stops the edge first, then the services. The children get SIGTERM
if the supervisor itself dies.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from core.config import DEFAULT_ADDRESSES, DEFAULT_METRICS_ADDRESSES
from services.common.private import private_dir

SERVICES = ("auth", "files", "inference", "edge")
STOP_GRACE_S = 10.0
# The edge's own grace (open streams, 5 s) plus its final settle flush (10 s).
EDGE_STOP_GRACE_S = 20.0
CONFIG_ERROR = 2  # a child's exit code for a configuration error: no restart heals it
RESTART_BACKOFF_S = 0.5
RESTART_BACKOFF_MAX_S = 10.0
MAX_CRASHES = 5
CRASH_WINDOW_S = 60.0
PR_SET_PDEATHSIG = 1
try:
    _PRCTL: Callable[..., int] | None = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: children outlive a killed supervisor
    _PRCTL = None
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
    defaults = {
        **{f"AQUEDUCT_{s.upper()}_ADDR": a for s, a in DEFAULT_ADDRESSES.items()},
        **{f"AQUEDUCT_{s.upper()}_METRICS_ADDR": a for s, a in DEFAULT_METRICS_ADDRESSES.items()},
    }
    for name, default in defaults.items():
        if not env.get(name):
            env[name] = default if _free(default) else _ephemeral_address()
    env.setdefault("AQUEDUCT_DATA_DIR", "./var")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _die_with_parent(parent: int) -> Callable[[], None]:
    """For a child, before exec: get SIGTERM when the supervisor dies (Linux), and
    exit at once if it already has."""

    def arrange() -> None:
        if _PRCTL is not None:
            _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:
            os._exit(1)

    return arrange


def start_one(name: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    module = "edge" if name == "edge" else f"services.{name}"
    # Its own process group: Ctrl-C in a terminal reaches the supervisor alone,
    # which then stops the children in order.
    return subprocess.Popen(
        [sys.executable, "-m", module],
        env=env,
        process_group=0,
        preexec_fn=_die_with_parent(os.getpid()),
    )


def start(env: dict[str, str]) -> dict[str, subprocess.Popen[bytes]]:
    private_dir(Path(env["AQUEDUCT_DATA_DIR"]))
    return {name: start_one(name, env) for name in SERVICES}


def stop_all(children: dict[str, subprocess.Popen[bytes]]) -> None:
    """The edge first, so that its last settles reach an auth still serving and its
    open streams finish against inference; then the services together."""
    _stop([children[n] for n in ("edge",) if n in children], EDGE_STOP_GRACE_S)
    _stop([c for n, c in children.items() if n != "edge"], STOP_GRACE_S)


def _stop(children: list[subprocess.Popen[bytes]], grace: float) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in children:
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
        f"  {s:<10} grpc  {env[f'AQUEDUCT_{s.upper()}_ADDR']}  (pid {children[s].pid}),"
        f"  metrics http://{env[f'AQUEDUCT_{s.upper()}_METRICS_ADDR']}/metrics"
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


@dataclass
class Restarts:
    """When a crashed child may start again: after a backoff that doubles with each
    recent crash; more than MAX_CRASHES within CRASH_WINDOW_S is not transient."""

    crashes: list[float] = field(default_factory=list)

    def delay(self, now: float) -> float | None:
        """Seconds to wait before restarting; None to give up."""
        self.crashes = [t for t in self.crashes if now - t < CRASH_WINDOW_S] + [now]
        if len(self.crashes) > MAX_CRASHES:
            return None
        return float(min(RESTART_BACKOFF_MAX_S, RESTART_BACKOFF_S * 2 ** (len(self.crashes) - 1)))


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
    restarts = {name: Restarts() for name in children}
    due: dict[str, float] = {}  # crashed children and when they start again
    while not stopping:
        now = time.monotonic()
        for name, child in list(children.items()):
            code = None if name in due else child.poll()
            if code is None:
                continue
            why = f"signal {-code}" if code < 0 else f"exit code {code}"
            delay = None if code == CONFIG_ERROR else restarts[name].delay(now)
            if delay is None:
                reason = (
                    "a configuration error"
                    if code == CONFIG_ERROR
                    else f"{MAX_CRASHES + 1} crashes within {CRASH_WINDOW_S:.0f} s"
                )
                say(f"{name} stopped unexpectedly ({why}); {reason}: stopping the others.")
                stop_all(children)
                return 1
            say(f"{name} stopped unexpectedly ({why}); restarting it in {delay:g} s.")
            due[name] = now + delay
        for name, at in list(due.items()):
            if now >= at and not stopping:
                del due[name]
                children[name] = start_one(name, env)
                say(f"{name} restarted (pid {children[name].pid}).")
        if not announced:
            if _edge_ready(base):
                announce(env, base, children)
                announced = True
            elif now - started > READY_TIMEOUT_S:
                say(f"not ready after {READY_TIMEOUT_S:.0f} s; see {base}/readyz")
                started = float("inf")
        time.sleep(0.2)
    print("aqueduct: stopping…", flush=True)
    stop_all(children)
    return 0


def say(line: str) -> None:
    print(f"aqueduct: {line}", file=sys.stderr, flush=True)


def main() -> None:
    env = child_environment()
    children = start(env)
    sys.exit(supervise(children, env))


if __name__ == "__main__":
    main()
