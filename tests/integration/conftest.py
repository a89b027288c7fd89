from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.stack import Stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = Stack(data_dir=Path(tmp_path_factory.mktemp("aqueduct"))).start()
    yield running
    running.stop()


@pytest.fixture(scope="session")
def client(stack: Stack) -> openai.OpenAI:
    return stack.sdk()
