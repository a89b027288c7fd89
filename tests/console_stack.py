"""A stack for the web console's tests: two models behind a fake upstream (one
never asked, so the dashboard must list it with zero requests), keys in two
teams."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.fake_upstream import FakeUpstream
from tests.stack import ADMIN_KEY, Stack

CHAT_MODEL = "fake-chat"
IDLE_MODEL = "idle-model"


@contextmanager
def console_stack(data_dir: Path) -> Iterator[tuple[Stack, FakeUpstream]]:
    upstream = FakeUpstream("console").start()
    config = data_dir / "models.yaml"
    config.write_text(
        f"""
models:
  - name: {CHAT_MODEL}
    backend: openai
    upstreams: [{{url: "{upstream.url}"}}]
  - name: {IDLE_MODEL}
    backend: openai
    capabilities: [vision]
    upstreams: [{{url: "{upstream.url}"}}]
"""
    )
    stack = Stack(data_dir=data_dir, models_config=config).start()
    try:
        yield stack, upstream
    finally:
        stack.stop()
        upstream.stop()


def create_key(stack: Stack, **spec: Any) -> dict[str, Any]:
    answer = httpx.post(
        f"{stack.base_url}/v1/admin/keys",
        json=spec,
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=10,
    )
    assert answer.status_code == 201, answer.text
    created: dict[str, Any] = answer.json()
    return created
