"""Stored responses with replicas sharing PostgreSQL: a response kept through one
gateway is read, continued and deleted through another, and stays its team's.

Two stacks (each its own edge, auth, files and inference) on one database, as
replicas behind a balancer would be. Against this machine's real PostgreSQL (CI
starts it); elsewhere these skip.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.admin_api import create_key
from tests.fake_upstream import FakeUpstream, Reply
from tests.services_available import POSTGRES, fresh_postgres_database, listening
from tests.stack import Stack

pytestmark = pytest.mark.skipif(
    not listening(POSTGRES), reason="PostgreSQL is not running on 127.0.0.1:5432"
)


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream("pg-responses").start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def replicas(
    tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream
) -> Iterator[tuple[Stack, Stack]]:
    with fresh_postgres_database() as database:
        stacks = []
        try:
            for name in ("one", "two"):
                root = Path(tmp_path_factory.mktemp(f"pg-responses-{name}"))
                config = root / "models.yaml"
                config.write_text(
                    "models:\n  - name: fake\n    backend: openai\n"
                    f'    upstreams: [{{url: "{upstream.url}"}}]\n'
                )
                stack = Stack(data_dir=root, models_config=config, database_url=database)
                stacks.append(stack.start())
            yield stacks[0], stacks[1]
        finally:
            for stack in stacks:
                stack.stop()


def test_a_response_kept_by_one_replica_is_read_continued_and_deleted_by_another(
    replicas: tuple[Stack, Stack], upstream: FakeUpstream
) -> None:
    one, two = replicas
    key = create_key(one.base_url, team="pg-team")["key"]
    upstream.queue(Reply.stream("Lima is foggy."))
    first = one.sdk(key).responses.create(model="fake", input="Weather in Lima?")

    kept = two.sdk(key).responses.retrieve(first.id)
    assert kept.output_text == first.output_text == "Lima is foggy."

    upstream.queue(Reply.echo())
    second = two.sdk(key).responses.create(
        model="fake", previous_response_id=first.id, input="And tomorrow?"
    )
    assert second.previous_response_id == first.id
    sent = upstream.received[-1]["messages"]
    assert [(m["role"], m["content"]) for m in sent] == [
        ("user", "Weather in Lima?"),
        ("assistant", "Lima is foggy."),
        ("user", "And tomorrow?"),
    ]

    other_team = create_key(two.base_url, team="elsewhere")["key"]
    with pytest.raises(openai.NotFoundError):
        one.sdk(other_team).responses.retrieve(second.id)

    two.sdk(key).responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        one.sdk(key).responses.retrieve(first.id)
    assert one.sdk(key).responses.retrieve(second.id).id == second.id
