"""`make run`: start auth, files, inference and the edge as separate processes.

A small supervisor: it picks loopback ports for the gRPC services (unless the
environment names them), waits until the edge is ready, prints where it
listens with a ready-to-paste curl line, and keeps watch. A process that dies
is restarted after a backoff (and the output says so); a configuration error,
or more than MAX_CRASHES crashes within CRASH_WINDOW_S, stops everything. Ctrl-C
/ SIGTERM stops the edge first, then the services. The children get SIGTERM
if the supervisor itself dies.

With AQUEDUCT_EDGE_WORKERS above 1 (the default on a machine with several
CPUs), the edge is that many processes, `edge-1` … `edge-n`, each a whole edge
(its own key cache and key-event stream, prepared calls, settle queue; limits
are auth's, so they hold across workers) sharing the HTTP port with
SO_REUSEPORT, and each serving its metrics on its own port: Prometheus scrapes
each as an instance, as it does replicas. Each is restarted on its own; Ctrl-C
stops all of them before the services.

With AQUEDUCT_INFERENCE_WORKERS above 1 (the default from four CPUs up),
inference is that many processes, `inference-1` … `inference-n`, each on its
own gRPC port and metrics address; the edge is given the list and spreads its
calls over those that report SERVING (round-robin per call, gRPC's client-side
health checking). `inference-1` alone loads the bundled models (their memory
counted once); the others hand requests for them to it
(AQUEDUCT_LOCAL_MODELS_ADDR, services/inference/forwarded.py).
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from core.config import (
    DEFAULT_ADDRESSES,
    DEFAULT_METRICS_ADDRESSES,
    ConfigError,
    addresses_in,
    env_int,
)
from services.common.private import private_dir

SERVICES = ("auth", "files", "inference")
DEPENDENCY_UP = re.compile(r'^aqueduct_dependency_up\{dependency="([a-z.]+)"\} 1(?:\.0)?$', re.M)
INFERENCE_SERVING = re.compile(
    r'^aqueduct_health_serving\{health_name="aqueduct\.inference\.v1\.InferenceService"\} '
    r"1(?:\.0)?$",
    re.M,
)
# The default number of edge workers: one per two CPUs this process may use, at most
# this many (each costs its own memory; the gRPC services behind them are one each).
MAX_DEFAULT_EDGE_WORKERS = 4
# The default number of inference workers: as for the edge. Each serves upstream
# models itself; the bundled models stay in the first one.
MAX_DEFAULT_INFERENCE_WORKERS = 4
# With several edge workers and no AQUEDUCT_METRICS_PORT, worker i serves its
# metrics on this port + i (a free port if taken).
EDGE_METRICS_BASE_PORT = 9110
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


def _nothing_listens(host: str, port: int) -> bool:
    """No socket listens on `host:port`, one with SO_REUSEPORT (another edge's)
    included; connections a previous run left in TIME_WAIT do not count."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _ephemeral_address(host: str = "127.0.0.1") -> str:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return f"{host}:{probe.getsockname()[1]}"


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


def _per_two_cpus(cap: int) -> int:
    """One per two CPUs this process may run on (a `taskset` counts), 1 to `cap`."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min((cpus or 1) // 2, cap))


def edge_workers() -> int:
    """AQUEDUCT_EDGE_WORKERS, by default one per two CPUs this process may run on
    (a `taskset` counts), at least one, at most MAX_DEFAULT_EDGE_WORKERS. The edge
    is under half of a request's CPU (auth and inference take the rest), so one
    per CPU starves them: on 2 CPUs, 2 workers served 384-409 JSON req/s where 1
    served 449-487."""
    return env_int("AQUEDUCT_EDGE_WORKERS", _per_two_cpus(MAX_DEFAULT_EDGE_WORKERS), minimum=1)


def inference_workers() -> int:
    """AQUEDUCT_INFERENCE_WORKERS, by default as many as edge workers would be
    (one per two CPUs, at most MAX_DEFAULT_INFERENCE_WORKERS): inference is the
    other large share of a request's CPU beside the edge."""
    default = _per_two_cpus(MAX_DEFAULT_INFERENCE_WORKERS)
    return env_int("AQUEDUCT_INFERENCE_WORKERS", default, minimum=1)


def _port(address: str) -> str:
    return address.rpartition(":")[2]


def _next_port(address: str, offset: int, planned: set[str]) -> str:
    """`address` with its port moved up by `offset`, or a free port on its host if
    that one is taken or `planned` for another child (ports, not yet bound)."""
    host, _, port = address.rpartition(":")
    moved = f"{host}:{int(port) + offset}"
    while _port(moved) in planned or not _free(moved):
        moved = _ephemeral_address(host.strip("[]"))
    planned.add(_port(moved))
    return moved


def inference_plans(env: dict[str, str], workers: int) -> dict[str, dict[str, str]]:
    """`inference-1` … `inference-n`: worker i listens on AQUEDUCT_INFERENCE_ADDR's
    port + i - 1 and serves metrics on AQUEDUCT_INFERENCE_METRICS_ADDR's port + i - 1
    (a free port where taken), kept across restarts. Workers 2 … n forward the
    local models to worker 1, unless the operator named another process for them."""
    first = _one("AQUEDUCT_INFERENCE_ADDR", env)
    metrics = _one("AQUEDUCT_INFERENCE_METRICS_ADDR", env)
    planned = {_port(a) for name, a in env.items() if name.endswith("_ADDR") and "," not in a}
    planned |= {env.get("AQUEDUCT_HTTP_PORT", "8000"), env.get("AQUEDUCT_METRICS_PORT", "")}
    plans: dict[str, dict[str, str]] = {}
    for worker in range(1, workers + 1):
        own = {
            "AQUEDUCT_INFERENCE_ADDR": (
                first if worker == 1 else _next_port(first, worker - 1, planned)
            ),
            "AQUEDUCT_INFERENCE_METRICS_ADDR": (
                metrics if worker == 1 else _next_port(metrics, worker - 1, planned)
            ),
        }
        if worker > 1 and not env.get("AQUEDUCT_LOCAL_MODELS_ADDR"):
            own["AQUEDUCT_LOCAL_MODELS_ADDR"] = first
        plans[f"inference-{worker}"] = {**env, **own}
    return plans


def _one(name: str, env: dict[str, str]) -> str:
    addresses = addresses_in(name, env.get(name, ""))
    if len(addresses) != 1:
        raise ConfigError(
            f"{name}={env.get(name, '')!r}: with several inference workers, give one host:port "
            "(the first worker's; the others take the next ports)"
        )
    return addresses[0]


def plan(env: dict[str, str], workers: int, inference: int = 1) -> dict[str, dict[str, str]]:
    """Each child's name and environment. One edge worker: `edge`, exactly as
    ever. Several: `edge-1` … `edge-n`, each told its number (it then binds the
    HTTP port with SO_REUSEPORT) and given its own metrics port, which it keeps
    across restarts. One inference worker: `inference`, as ever; several: see
    inference_plans, and every other child finds them all in
    AQUEDUCT_INFERENCE_ADDR."""
    children = {name: env for name in SERVICES}
    if inference > 1:
        workers_of_inference = inference_plans(env, inference)
        listed = ",".join(w["AQUEDUCT_INFERENCE_ADDR"] for w in workers_of_inference.values())
        env = {**env, "AQUEDUCT_INFERENCE_ADDR": listed}
        children = {"auth": env, "files": env, **workers_of_inference}
    if workers == 1:
        return {**children, "edge": env}
    host = env.get("AQUEDUCT_METRICS_HOST") or env.get("AQUEDUCT_HTTP_HOST") or "127.0.0.1"
    first = env_int("AQUEDUCT_METRICS_PORT", 0)
    for worker in range(1, workers + 1):
        if first:  # the operator's: worker i on that port + i - 1
            port = str(first + worker - 1)
        else:
            address = f"{host}:{EDGE_METRICS_BASE_PORT + worker}"
            port = (address if _free(address) else _ephemeral_address(host)).rpartition(":")[2]
        children[f"edge-{worker}"] = {
            **env,
            "AQUEDUCT_EDGE_WORKER": str(worker),
            "AQUEDUCT_METRICS_HOST": host,
            "AQUEDUCT_METRICS_PORT": port,
        }
    return children


def is_edge(name: str) -> bool:
    return name == "edge" or name.startswith("edge-")


def service_of(name: str) -> str:
    """The program a child runs: `inference-2` is inference."""
    return name.partition("-")[0]


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
    module = "edge" if is_edge(name) else f"services.{service_of(name)}"
    # Its own process group: Ctrl-C in a terminal reaches the supervisor alone,
    # which then stops the children in order.
    return subprocess.Popen(
        [sys.executable, "-m", module],
        env=env,
        process_group=0,
        preexec_fn=_die_with_parent(os.getpid()),
    )


def start(plans: dict[str, dict[str, str]]) -> dict[str, subprocess.Popen[bytes]]:
    for env in plans.values():
        private_dir(Path(env["AQUEDUCT_DATA_DIR"]))
    return {name: start_one(name, env) for name, env in plans.items()}


def stop_all(children: dict[str, subprocess.Popen[bytes]]) -> None:
    """The edge (every worker) first, so that its last settles reach an auth still
    serving and its open streams finish against inference; then the services together."""
    _stop([c for n, c in children.items() if is_edge(n)], EDGE_STOP_GRACE_S)
    _stop([c for n, c in children.items() if not is_edge(n)], STOP_GRACE_S)


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


def http_get(url: str, headers: dict[str, str] | None = None, timeout: float = 1.0) -> bytes | None:
    """The body of a 200 answer to GET `url` (http://host:port/path), else None.

    HTTP/1.0 over a plain socket, not urllib: urllib brings http.client, ssl and
    email, ~7 MiB the supervisor would hold for its whole life."""
    netloc, _, path = url.removeprefix("http://").partition("/")
    host, _, port = netloc.rpartition(":")
    request = [f"GET /{path} HTTP/1.0", f"Host: {netloc}"]
    request += [f"{name}: {value}" for name, value in (headers or {}).items()]
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as sock:
            sock.sendall(("\r\n".join(request) + "\r\n\r\n").encode())
            answer = b"".join(iter(lambda: sock.recv(65536), b""))
    except (OSError, ValueError):
        return None
    head, _, body = answer.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    return body if len(status) >= 2 and status[1] == b"200" else None


def _answers(url: str) -> bool:
    return http_get(url) is not None


def _metrics_url(env: dict[str, str]) -> str:
    return f"http://{env['AQUEDUCT_METRICS_HOST']}:{env['AQUEDUCT_METRICS_PORT']}/metrics"


def _worker_ready(metrics_url: str) -> bool:
    """One edge worker is up and reaches auth, files and inference: its metrics
    (served once its app has started, just before it listens) show each SERVING
    as it last polled them. Its /readyz cannot be asked: the shared port hands a
    connection to whichever worker the kernel picks."""
    body = http_get(metrics_url)
    if body is None:
        return False
    text = body.decode(errors="replace")
    # Read by pattern, not with prometheus-client's parser: importing that
    # library would cost the supervisor 12 MiB for its whole life.
    up = set(DEPENDENCY_UP.findall(text))
    return {"auth", "files", "inference"} <= up


def _inference_worker_ready(metrics_address: str) -> bool:
    """One inference worker reports SERVING (its metrics count its health)."""
    body = http_get(f"http://{metrics_address}/metrics")
    return body is not None and INFERENCE_SERVING.search(body.decode(errors="replace")) is not None


def _edge_ready(base: str, plans: dict[str, dict[str, str]]) -> bool:
    """The edge answers ready on its port and, with several workers, every one of
    them is ready; so is every inference worker (the edge is ready with one)."""
    workers = [_metrics_url(env) for name, env in plans.items() if name.startswith("edge-")]
    inference = [
        env["AQUEDUCT_INFERENCE_METRICS_ADDR"]
        for name, env in plans.items()
        if name.startswith("inference-")
    ]
    return (
        _answers(f"{base}/readyz")
        and all(_worker_ready(url) for url in workers)
        and all(_inference_worker_ready(address) for address in inference)
    )


def first_model(base: str, secret: str) -> str:
    """The first model the edge lists (the models file's order), for the curl line."""
    body = http_get(f"{base}/v1/models", {"Authorization": f"Bearer {secret}"}, timeout=2)
    try:
        return str(json.loads(body or b"")["data"][0]["id"])
    except (ValueError, KeyError, IndexError, TypeError):
        return DEFAULT_MODEL


def announce(
    env: dict[str, str],
    base: str,
    children: dict[str, subprocess.Popen[bytes]],
    plans: dict[str, dict[str, str]],
) -> None:
    key_file = Path(env["AQUEDUCT_DATA_DIR"]) / "bootstrap-key"
    if env.get("AQUEDUCT_BOOTSTRAP_KEY"):
        key, secret = "$AQUEDUCT_BOOTSTRAP_KEY", env["AQUEDUCT_BOOTSTRAP_KEY"]
    else:
        key = f"$(cat {key_file})"
        secret = key_file.read_text().strip() if key_file.is_file() else ""
    model = first_model(base, secret)
    edges = [n for n in children if is_edge(n)]
    lines = [
        f"  {n:<10} http  {base}/v1  (pid {children[n].pid})"
        + (f",  metrics {_metrics_url(plans[n])}" if n != "edge" else "")
        for n in edges
    ] + [
        f"  {n:<10} grpc  {plans[n][f'AQUEDUCT_{service_of(n).upper()}_ADDR']}"
        f"  (pid {children[n].pid}),"
        f"  metrics http://{plans[n][f'AQUEDUCT_{service_of(n).upper()}_METRICS_ADDR']}/metrics"
        for n in children
        if not is_edge(n)
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


class Restarts:
    """When a crashed child may start again: after a backoff that doubles with each
    recent crash; more than MAX_CRASHES within CRASH_WINDOW_S is not transient.
    (A plain class: dataclasses would bring inspect into the supervisor, 1 MiB.)"""

    def __init__(self) -> None:
        self.crashes: list[float] = []

    def delay(self, now: float) -> float | None:
        """Seconds to wait before restarting; None to give up."""
        self.crashes = [t for t in self.crashes if now - t < CRASH_WINDOW_S] + [now]
        if len(self.crashes) > MAX_CRASHES:
            return None
        return float(min(RESTART_BACKOFF_MAX_S, RESTART_BACKOFF_S * 2 ** (len(self.crashes) - 1)))


def supervise(
    children: dict[str, subprocess.Popen[bytes]],
    env: dict[str, str],
    plans: dict[str, dict[str, str]],
) -> int:
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
                children[name] = start_one(name, plans[name])
                say(f"{name} restarted (pid {children[name].pid}).")
        if not announced:
            if _edge_ready(base, plans):
                announce(env, base, children, plans)
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
    try:
        workers = edge_workers()
        plans = plan(env, workers, inference_workers())
        host = env.get("AQUEDUCT_HTTP_HOST", "127.0.0.1")
        port = env_int("AQUEDUCT_HTTP_PORT", 8000)
    except ConfigError as error:
        say(f"configuration error: {error}")
        sys.exit(CONFIG_ERROR)
    # The workers would join whatever else listens on the port with SO_REUSEPORT
    # (another `make run`'s edge workers): nothing may.
    if workers > 1 and not _nothing_listens(host, port):
        say(f"{host}:{port} is in use; the edge workers would share it. Stopping.")
        sys.exit(CONFIG_ERROR)
    children = start(plans)
    sys.exit(supervise(children, env, plans))


if __name__ == "__main__":
    main()
