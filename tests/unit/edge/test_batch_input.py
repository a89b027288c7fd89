"""A batch's input file is checked line by line before anything runs."""

from __future__ import annotations

import orjson
import pytest

from edge import batch_input
from edge.batch_input import parse_input


def line(custom_id: str, **overrides: object) -> bytes:
    return orjson.dumps(
        {
            "custom_id": custom_id,
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "m", "messages": []},
            **overrides,
        }
    )


def test_good_lines_with_or_without_v1_and_a_trailing_newline() -> None:
    content = line("a") + b"\n" + line("b", url="/chat/completions") + b"\n\n"
    lines, errors = parse_input(content, "/v1/chat/completions")
    assert errors == []
    assert [(x.index, x.custom_id) for x in lines] == [(0, "a"), (1, "b")]
    assert lines[0].body == {"model": "m", "messages": []}


def test_every_bad_line_is_named_and_nothing_runs() -> None:
    content = b"\n".join(
        [
            line("a"),
            b"[1, 2]",
            line("a"),
            line("b", extra=1),
            line("", method="POST"),
            line("c", body={"model": ""}),
            b"",  # a blank line inside the file
            line("z"),
        ]
    )
    lines, errors = parse_input(content, "/v1/chat/completions")
    assert lines == []
    assert [(e.line, e.code, e.param) for e in errors] == [
        (2, "invalid_json_line", ""),
        (3, "duplicate_custom_id", "custom_id"),
        (4, "unknown_field", "extra"),
        (5, "missing_custom_id", "custom_id"),
        (6, "missing_model", "body.model"),
        (7, "invalid_json_line", ""),
    ]
    assert all(e.message.startswith(f"Line {e.line}: ") for e in errors)


def test_size_limits_fail_the_file_as_a_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_input(b"\n\n", "/v1/embeddings")[1][0].code == "empty_file"
    monkeypatch.setattr(batch_input, "MAX_LINES", 2)
    content = b"\n".join(line(str(n)) for n in range(3))
    assert parse_input(content, "/v1/chat/completions")[1][0].code == "too_many_lines"
    monkeypatch.setattr(batch_input, "MAX_INPUT_BYTES", 10)
    assert parse_input(content, "/v1/chat/completions")[1][0].code == "file_too_large"


def test_errors_stop_after_a_hundred() -> None:
    content = b"\n".join(b"nope" for _ in range(500))
    assert len(parse_input(content, "/v1/completions")[1]) == batch_input.MAX_REPORTED_ERRORS
