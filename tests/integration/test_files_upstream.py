"""File parts reach an OpenAI-compatible upstream as text: the fake upstream
records the exact messages the gateway sent."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.fake_upstream import FakeUpstream
from tests.pdfs import make_pdf
from tests.stack import Stack

LINES = ["Field notes, page one.", "The launch code is VIOLET-7 and the moon is blue."]
QUESTION = "What is the launch code?"
EXPECTED = f'{QUESTION}\n<file name="codes.pdf">\n{LINES[0]}\n{LINES[1]}\n</file>'


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream("files").start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def client(
    tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream
) -> Iterator[openai.OpenAI]:
    data_dir = Path(tmp_path_factory.mktemp("files-upstream"))
    config = data_dir / "models.yaml"
    config.write_text(
        "models:\n"
        "  - name: remote\n"
        "    backend: openai\n"
        f'    upstreams: [{{url: "{upstream.url}"}}]\n'
    )
    stack = Stack(data_dir=data_dir, models_config=config).start()
    yield stack.sdk()
    stack.stop()


def sent_content(upstream: FakeUpstream) -> object:
    messages = upstream.received[-1]["messages"]
    assert len(messages) == 1 and messages[0]["role"] == "user"
    return messages[0]["content"]


def test_a_pdf_by_file_id_reaches_the_upstream_as_text(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    uploaded = client.files.create(file=("codes.pdf", make_pdf(LINES)), purpose="user_data")
    client.chat.completions.create(
        model="remote",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": QUESTION},
                    {"type": "file", "file": {"file_id": uploaded.id}},
                ],
            }
        ],
    )
    assert sent_content(upstream) == EXPECTED


def test_a_base64_pdf_reaches_the_upstream_as_text(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    encoded = base64.b64encode(make_pdf(LINES)).decode()
    client.chat.completions.create(
        model="remote",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": QUESTION},
                    {
                        "type": "file",
                        "file": {
                            "filename": "codes.pdf",
                            "file_data": f"data:application/pdf;base64,{encoded}",
                        },
                    },
                ],
            }
        ],
    )
    assert sent_content(upstream) == EXPECTED
