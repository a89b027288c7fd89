"""The dashboard against the running gateway: every metric each of its queries reads
is served by the edge or a service, with the labels the query selects and groups
by. A metric or label renamed in the code and not in the dashboard fails here."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.dashboard import (
    PROMETHEUS_SERIES,
    TARGET_LABELS,
    expressions,
    grouping_labels,
    load,
    metric_names,
    sample_names,
    selected_labels,
)
from tests.fake_upstream import FakeUpstream, Reply
from tests.stack import ADMIN_KEY, Stack

HI = [{"role": "user", "content": "hi"}]
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream("dashboard").start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def gateway(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = Path(tmp_path_factory.mktemp("dashboard"))
    config = root / "models.yaml"
    # An upstream model (upstream health) and the bundled one (its queue).
    config.write_text(
        "models:\n  - name: fake\n    backend: openai\n"
        f'    upstreams: [{{url: "{upstream.url}"}}]\n'
        "  - name: local\n    backend: local\n"
    )
    running = Stack(data_dir=root, models_config=config).start()
    yield running
    running.stop()


def served(url: str) -> dict[str, set[str]]:
    """Sample names at `url` with the label names each carries; a family without
    samples yet (a counter never incremented) counts with no labels known."""
    answer = httpx.get(url, timeout=10)
    assert answer.status_code == 200, url
    found: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(answer.text):
        for name in sample_names(family.name, family.type):
            found.setdefault(name, set())
        for sample in family.samples:
            found.setdefault(sample.name, set()).update(sample.labels)
    return found


def test_every_metric_and_label_the_dashboard_reads_is_served(
    gateway: Stack, upstream: FakeUpstream
) -> None:
    http = httpx.Client(base_url=gateway.base_url, headers=ADMIN, timeout=60)
    # A streamed answer (TTFT, time per token, tokens, an upstream attempt), a 429
    # (a limit's name), a stored file (bytes per team).
    key = http.post(
        "/v1/admin/keys", json={"name": "dash", "team": "t-dash", "limits": {"rpm": 1}}
    ).json()["key"]
    chat = {"model": "fake", "messages": HI, "stream": True}
    upstream.queue(Reply.stream("a", "b", "c"))
    user = {"authorization": f"Bearer {key}"}
    answered = http.post("/v1/chat/completions", json=chat, headers=user)
    assert answered.status_code == 200 and answered.text.endswith("data: [DONE]\n\n")
    assert http.post("/v1/chat/completions", json=chat, headers=user).status_code == 429
    uploaded = http.post(
        "/v1/files", data={"purpose": "user_data"}, files={"file": ("a.txt", b"x" * 10)}
    )
    assert uploaded.status_code == 200

    urls = [f"{gateway.base_url}/metrics"] + [
        f"http://127.0.0.1:{gateway.metrics_ports[name]}/metrics"
        for name in ("auth", "files", "inference")
    ]
    exposed: dict[str, set[str]] = {}
    for url in urls:
        for name, labels in served(url).items():
            exposed.setdefault(name, set()).update(labels)

    checked_labels = 0
    for title, expr in expressions(load()):
        names = metric_names(expr) - PROMETHEUS_SERIES
        missing = names - set(exposed)
        assert not missing, f"{title}: {sorted(missing)} served by no process: {expr}"
        for name, labels in selected_labels(expr).items():
            if name in exposed:
                assert exposed[name], f"{title}: {name} has no samples to check labels on"
                unknown = labels - exposed[name] - TARGET_LABELS
                assert not unknown, f"{title}: {name} has no label {sorted(unknown)}"
                checked_labels += 1
        if names:
            carried = set().union(*(exposed[name] for name in names)) | TARGET_LABELS
            unknown = grouping_labels(expr) - carried
            assert not unknown, f"{title}: no metric of {sorted(names)} has {sorted(unknown)}"
    assert checked_labels >= 30
