"""Smoke suite against a running compose deployment (scripts/compose_test.sh runs it).

Not a pytest module (pytest collects test_*.py only, and this needs a Docker engine
and a stack started by compose): a script that talks to the edge the way a user
does, through the port compose published on the host, with the official `openai`
SDK, and drives the containers with `docker compose` (the admin CLI inside the auth
container, a restart of inference). Each check prints one line; the first failed
check stops it with exit code 1.

    python -m tests.compose.smoke --base-url http://127.0.0.1:8000 \\
        --compose "docker compose -p aqueduct -f docker-compose.yml"

The admin key is AQUEDUCT_BOOTSTRAP_KEY, as compose gave it to the auth service.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import openai
from openai.types.chat import ChatCompletionMessageParam

CHAT_MODEL = "smollm2-135m-instruct"
EMBEDDING_MODEL = "multilingual-e5-small"
EMBEDDING_DIMENSIONS = 384
HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello."}]
# Checks that change the stack or need a profile: run only when named (--only).
ONLY_WHEN_ASKED = ("scaled", "both_edges")
# The edges of the `balanced` profile, which HAProxy balances over.
BALANCED_EDGES = ("edge", "edge-2")
# Model calls on two shared cores: generous, but bounded.
TIMEOUT_S = 120.0


class Smoke:
    def __init__(self, base_url: str, compose: list[str], key: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.compose = compose
        self.key = key
        self.client = self.sdk(key)
        self.limited_secret = ""

    def sdk(self, key: str) -> openai.OpenAI:
        # No SDK retries: a 429 or a 503 must be seen, not retried away.
        return openai.OpenAI(
            base_url=f"{self.base_url}/v1", api_key=key, max_retries=0, timeout=TIMEOUT_S
        )

    def docker(self, *args: str, timeout: float = 180) -> str:
        done = subprocess.run(
            [*self.compose, *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            raise AssertionError(
                f"{shlex.join([*self.compose, *args])} exited {done.returncode}: {done.stderr}"
            )
        return done.stdout

    def admin(self, *args: str) -> Any:
        """The admin CLI inside the auth container, answering JSON."""
        out = self.docker(
            "exec", "-T", "auth", "python", "-m", "services.auth.admin",
            "--addr", "127.0.0.1:50051", *args,
        )  # fmt: skip
        return json.loads(out)

    # --- checks ---------------------------------------------------------------------

    def models(self) -> str:
        ids = {model.id for model in self.client.models.list()}
        assert {CHAT_MODEL, EMBEDDING_MODEL} <= ids, ids
        return f"{len(ids)} models: {', '.join(sorted(ids))}"

    def chat(self) -> str:
        completion = self.client.chat.completions.create(
            model=CHAT_MODEL, messages=HI, max_tokens=12, temperature=0
        )
        choice = completion.choices[0]
        assert completion.model == CHAT_MODEL, completion.model
        assert choice.message.role == "assistant" and choice.message.content, choice
        assert choice.finish_reason in ("stop", "length"), choice.finish_reason
        assert completion.usage is not None and completion.usage.completion_tokens >= 1
        return f"{choice.message.content!r} ({completion.usage.completion_tokens} tokens)"

    def stream(self) -> str:
        chunks = list(
            self.client.chat.completions.create(
                model=CHAT_MODEL,
                messages=HI,
                max_tokens=12,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
        assert text, "no content in the stream"
        assert finishes[-1] in ("stop", "length"), finishes
        assert len({c.id for c in chunks}) == 1, "one completion id for every chunk"
        usage = chunks[-1].usage
        assert usage is not None and usage.completion_tokens >= 1, chunks[-1]
        return f"{len(chunks)} chunks, {text!r}"

    def embeddings(self) -> str:
        answer = self.client.embeddings.create(model=EMBEDDING_MODEL, input=["hello", "bonjour"])
        vectors = [item.embedding for item in answer.data]
        assert [item.index for item in answer.data] == [0, 1]
        assert all(len(v) == EMBEDDING_DIMENSIONS for v in vectors), [len(v) for v in vectors]
        assert vectors[0] != vectors[1]
        return f"2 vectors of {EMBEDDING_DIMENSIONS}"

    def file_part(self) -> str:
        body = b"The launch code of the compose smoke test is PELICAN-7421.\n" * 4
        uploaded = self.client.files.create(
            file=("codes.txt", body, "text/plain"), purpose="user_data"
        )
        assert uploaded.bytes == len(body) and uploaded.status == "processed", uploaded
        listed = {f.id for f in self.client.files.list()}
        assert uploaded.id in listed
        assert self.client.files.content(uploaded.id).content == body

        def prompt_tokens(*extra: dict[str, Any]) -> int:
            question: dict[str, Any] = {"type": "text", "text": "What is the launch code?"}
            messages: list[Any] = [{"role": "user", "content": [question, *extra]}]
            completion = self.client.chat.completions.create(
                model=CHAT_MODEL,
                max_tokens=1,
                temperature=0,
                messages=messages,
            )
            assert completion.usage is not None
            return completion.usage.prompt_tokens

        without = prompt_tokens()
        with_file = prompt_tokens({"type": "file", "file": {"file_id": uploaded.id}})
        # The file's text (4 lines) really went into the prompt, read from the files
        # service's volume by the inference path.
        assert with_file > without + 40, (without, with_file)
        self.client.files.delete(uploaded.id)
        return f"{uploaded.id}: prompt {without} -> {with_file} tokens with the file part"

    def limited_key(self) -> str:
        created = self.admin(
            "keys", "create", "--name", "compose-smoke-limited", "--team", "smoke",
            "--models", CHAT_MODEL, "--rpm", "1",
        )  # fmt: skip
        secret, key_id = created["secret"], created["key"]["id"]
        self.limited_secret = secret
        assert secret.startswith("sk-aq-"), created
        limited = self.sdk(secret)
        limited.chat.completions.create(model=CHAT_MODEL, messages=HI, max_tokens=1)
        try:
            limited.chat.completions.create(model=CHAT_MODEL, messages=HI, max_tokens=1)
        except openai.RateLimitError as error:
            assert error.status_code == 429
            assert "'rpm'" in error.message, error.message
            body = error.body if isinstance(error.body, dict) else {}
            assert body.get("type") == "rate_limit_error", error.body
            retry_after = int(error.response.headers["retry-after"])
            assert retry_after >= 1
        else:
            raise AssertionError("the second request in a minute on an rpm=1 key got through")
        # Limited to its one model: another model is refused, not rate limited.
        try:
            limited.embeddings.create(model=EMBEDDING_MODEL, input="x")
        except (openai.PermissionDeniedError, openai.NotFoundError) as error:
            refused = error.status_code
        else:
            raise AssertionError("a key limited to the chat model used the embedding model")
        return (
            f"key {key_id}: second request 429, Retry-After {retry_after}s; other model {refused}"
        )

    def admin_cli(self) -> str:
        keys = self.admin("keys", "list")["keys"]
        limited = [k for k in keys if k["name"] == "compose-smoke-limited"]
        assert len(limited) == 1, [k["name"] for k in keys]
        # JSON of the proto: int64 fields are strings, false booleans left out.
        assert int(limited[0]["limits"]["rpm"]) == 1 and limited[0]["team"] == "smoke", limited
        revoked = self.admin("keys", "revoke", limited[0]["id"])["key"]
        assert revoked["revoked"] is True, revoked
        try:
            self.sdk(self.limited_secret).models.list()
        except openai.AuthenticationError as error:
            assert error.status_code == 401
        else:
            raise AssertionError("a revoked key still lists models")
        # The ledger is written as requests settle: a moment after their answers.
        end = time.monotonic() + 20
        while True:
            totals = self.admin("usage", "--group-by", "model").get("totals", [])
            requests = {row.get("model"): int(row.get("requests", 0)) for row in totals}
            if requests.get(CHAT_MODEL, 0) >= 4 or time.monotonic() > end:
                break
            time.sleep(1)
        assert requests.get(CHAT_MODEL, 0) >= 4, totals
        return f"{len(keys)} keys listed, the limited one revoked (then 401), usage {requests}"

    def restart_inference(self) -> str:
        started = time.monotonic()
        self.docker("restart", "inference", timeout=120)
        # While inference loads its models the edge reports not ready; then everything
        # is healthy again and a chat goes through.
        self.wait_healthy(deadline_s=240)
        healthy_s = time.monotonic() - started
        chat = self.chat()
        return f"healthy again {healthy_s:.0f}s after the restart; chat {chat}"

    def both_edges(self) -> str:
        """Through a balancer (profile `balanced`): requests reach both edges."""
        before = {edge: self.edge_requests(edge) for edge in BALANCED_EDGES}
        for i in range(6):  # counted by the edge's request metric (/v1/models is not)
            self.client.embeddings.create(model=EMBEDDING_MODEL, input=f"balanced {i}")
        after = {edge: self.edge_requests(edge) for edge in BALANCED_EDGES}
        served = {edge: after[edge] - before[edge] for edge in BALANCED_EDGES}
        assert all(n >= 1 for n in served.values()), served
        assert sum(served.values()) >= 6, served
        return f"6 requests through the balancer, answered by {served}"

    def scaled(self) -> str:
        """`up --scale inference=2 --scale auth=2`, then the edge restarted (it resolves the
        service names when it connects): its calls reach every replica of both."""
        self.docker(
            "up", "-d", "--wait", "--scale", "inference=2", "--scale", "auth=2", timeout=600
        )
        self.docker("restart", "edge", timeout=120)
        self.wait_healthy(deadline_s=240)
        replicas = {"inference": 9103, "auth": 9101}
        for service in replicas:
            running = self.docker("ps", "--format", "{{.Name}}", service).split()
            assert len(running) == 2, running
        before = {
            (service, i): self.grpc_calls(service, i, port)
            for service, port in replicas.items()
            for i in (1, 2)
        }
        for i in range(8):
            self.client.embeddings.create(model=EMBEDDING_MODEL, input=f"scaled {i}")
        served = {
            f"{service}-{i}": self.grpc_calls(service, i, port) - before[(service, i)]
            for service, port in replicas.items()
            for i in (1, 2)
        }
        assert all(calls >= 1 for calls in served.values()), served
        return f"8 embeddings, gRPC calls per replica: {served}"

    def grpc_calls(self, service: str, index: int, port: int) -> float:
        """Calls one replica answered, health checks left out (its metrics port)."""
        text = self.docker(
            "exec", "-T", "--index", str(index), service, "python", "-c",
            "import urllib.request;"
            f" print(urllib.request.urlopen('http://127.0.0.1:{port}/metrics').read().decode())",
        )  # fmt: skip
        return sum(
            float(line.rpartition(" ")[2])
            for line in text.splitlines()
            if line.startswith("grpc_server_handled_total{") and "grpc.health.v1" not in line
        )

    def edge_requests(self, service: str) -> float:
        """aqueduct_requests_total of one edge, from its metrics port (compose network only)."""
        text = self.docker(
            "exec", "-T", service, "python", "-c",
            "import urllib.request;"
            " print(urllib.request.urlopen('http://127.0.0.1:9100/metrics').read().decode())",
        )  # fmt: skip
        return sum(
            float(line.rpartition(" ")[2])
            for line in text.splitlines()
            if line.startswith("aqueduct_requests_total{")
        )

    def wait_healthy(self, deadline_s: float) -> None:
        end = time.monotonic() + deadline_s
        last = ""
        while time.monotonic() < end:
            rows = [json.loads(line) for line in self.docker("ps", "--format", "json").splitlines()]
            states = [(row["Name"], row["State"], row.get("Health", "")) for row in rows]
            last = json.dumps(states)
            settled = all(
                state == "running" and health in ("healthy", "") for _, state, health in states
            )
            if states and settled and self.ready():
                return
            time.sleep(3)
        raise AssertionError(f"not healthy within {deadline_s:.0f}s: {last}")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/readyz", timeout=5) as answer:
                return bool(answer.status == 200)
        except (urllib.error.URLError, OSError):
            return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.compose.smoke")
    parser.add_argument("--base-url", required=True, help="the edge as published on the host")
    parser.add_argument("--compose", required=True, help="the docker compose command, quoted")
    parser.add_argument(
        "--only", default="", help="comma-separated check names (default: all, in order)"
    )
    args = parser.parse_args(argv)
    key = os.environ.get("AQUEDUCT_BOOTSTRAP_KEY", "")
    if not key:
        parser.error("AQUEDUCT_BOOTSTRAP_KEY is not set")
    smoke = Smoke(args.base_url, shlex.split(args.compose), key)
    checks: list[tuple[str, Callable[[], str]]] = [
        ("models", smoke.models),
        ("chat", smoke.chat),
        ("stream", smoke.stream),
        ("embeddings", smoke.embeddings),
        ("file_part", smoke.file_part),
        ("limited_key", smoke.limited_key),
        ("admin_cli", smoke.admin_cli),
        ("restart_inference", smoke.restart_inference),
        # Only when asked for (--only): scaling changes the stack; both_edges needs the
        # `balanced` profile's second edge.
        ("scaled", smoke.scaled),
        ("both_edges", smoke.both_edges),
    ]
    wanted = [name for name in args.only.split(",") if name]
    passed = 0
    for name, check in checks:
        if (wanted and name not in wanted) or (not wanted and name in ONLY_WHEN_ASKED):
            continue
        started = time.monotonic()
        try:
            detail = check()
        except Exception as error:
            print(f"FAIL {name} ({time.monotonic() - started:.1f}s): {error!r}", flush=True)
            return 1
        passed += 1
        print(f"ok   {name} ({time.monotonic() - started:.1f}s): {detail}", flush=True)
    print(f"{passed} checks passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
