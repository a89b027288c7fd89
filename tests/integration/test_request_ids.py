"""One request followed by its id: the answer, the logs of all four processes, its ledger row."""

from __future__ import annotations

import base64
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson

from tests.processes import stop, supervisor

MODEL = "smollm2-135m-instruct"


def log_lines(log: Path) -> list[dict[str, Any]]:
    lines = []
    for raw in log.read_bytes().splitlines():
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue  # the supervisor's own banner
        if isinstance(line, dict):
            lines.append(line)
    return lines


def test_a_request_id_is_on_log_lines_of_the_edge_and_every_service(tmp_path: Path) -> None:
    # DEBUG: one line per request and per call.
    gateway = supervisor(tmp_path, AQUEDUCT_LOG_LEVEL="DEBUG")
    try:
        gateway.wait_ready()
        admin = (tmp_path / "data" / "bootstrap-key").read_text().strip()
        # A new key with a limit: its first use is verified by auth and reserves there.
        created = httpx.post(
            f"{gateway.base}/v1/admin/keys",
            headers={"authorization": f"Bearer {admin}"},
            json={"name": "followed", "limits": {"rpm": 100}},
            timeout=30,
        )
        assert created.status_code == 201, created.text
        client = openai.OpenAI(
            base_url=f"{gateway.base}/v1",
            api_key=created.json()["key"],
            max_retries=0,
            timeout=60,
        )
        note = base64.b64encode(b"The launch code is 1234.").decode()
        answer = client.chat.completions.with_raw_response.create(
            model=MODEL,
            max_tokens=2,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is the code?"},
                        {
                            "type": "file",
                            "file": {
                                "filename": "note.txt",
                                "file_data": f"data:text/plain;base64,{note}",
                            },
                        },
                    ],
                }
            ],
            extra_headers={"x-request-id": "req-followed"},
        )
        assert answer.headers["x-request-id"] == "req-followed"
    finally:
        assert stop(gateway.process, 30) == 0, gateway.log.read_text()[-3000:]
    lines = log_lines(gateway.log)
    services = {line["service"] for line in lines if line.get("request_id") == "req-followed"}
    assert services == {"edge", "auth", "files", "inference"}
    # Lines written outside any request (start-up, health checks) carry none.
    assert any(line["msg"] == "serving" and "request_id" not in line for line in lines)
    # And the ledger row carries it (auth flushed its rows before it stopped).
    with sqlite3.connect(tmp_path / "data" / "aqueduct.db") as db:
        rows = db.execute(
            "SELECT model FROM usage_records WHERE request_id = 'req-followed'"
        ).fetchall()
    assert rows == [(MODEL,)]
