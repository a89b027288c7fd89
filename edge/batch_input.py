"""A batch's input file, checked line by line before anything runs (pure, no I/O).

Each line is `{"custom_id", "method": "POST", "url", "body"}`. A file with any
malformed line fails the whole batch, with every problem listed by line number
(up to MAX_REPORTED_ERRORS), as OpenAI does. What a line's body asks for (its
model, its parameters) is judged when the line runs, exactly as a live request's
body would be, and a refusal there fails only that line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

MAX_LINES = 50_000
MAX_INPUT_BYTES = 100 * 1024 * 1024
MAX_CUSTOM_ID_CHARS = 512
MAX_REPORTED_ERRORS = 100


@dataclass(frozen=True)
class InputLine:
    index: int  # 0-based
    custom_id: str
    body: dict[str, Any]


@dataclass(frozen=True)
class LineError:
    code: str
    message: str
    line: int  # 1-based; 0 for the file as a whole
    param: str = ""


def _urls(endpoint: str) -> tuple[str, str]:
    """The batch's endpoint, with or without its /v1 prefix."""
    return endpoint, endpoint.removeprefix("/v1")


def parse_input(content: bytes, endpoint: str) -> tuple[list[InputLine], list[LineError]]:
    """The lines to run, or the reasons the file is refused."""
    if len(content) > MAX_INPUT_BYTES:
        return [], [
            LineError(
                "file_too_large",
                f"The input file is {len(content)} bytes; a batch takes at most "
                f"{MAX_INPUT_BYTES} bytes.",
                0,
            )
        ]
    lines: list[InputLine] = []
    errors: list[LineError] = []
    seen: set[str] = set()
    raw_lines = [raw for raw in content.split(b"\n")]
    while raw_lines and not raw_lines[-1].strip():
        raw_lines.pop()  # a trailing newline (or several) ends the file
    if not raw_lines:
        return [], [LineError("empty_file", "The input file has no lines.", 0)]
    if len(raw_lines) > MAX_LINES:
        return [], [
            LineError(
                "too_many_lines",
                f"The input file has {len(raw_lines)} lines; a batch takes at most {MAX_LINES}.",
                0,
            )
        ]
    urls = _urls(endpoint)
    for number, raw in enumerate(raw_lines, start=1):
        problem = _check(raw, number, urls, seen)
        if isinstance(problem, LineError):
            errors.append(problem)
            if len(errors) >= MAX_REPORTED_ERRORS:
                break
        else:
            lines.append(problem)
    return (lines, []) if not errors else ([], errors)


def _check(raw: bytes, number: int, urls: tuple[str, str], seen: set[str]) -> InputLine | LineError:
    def error(code: str, message: str, param: str = "") -> LineError:
        return LineError(code, f"Line {number}: {message}", number, param)

    try:
        line = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return error("invalid_json_line", "not a JSON object.")
    if not isinstance(line, dict):
        return error("invalid_json_line", "not a JSON object.")
    custom_id = line.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return error("missing_custom_id", "'custom_id' must be a non-empty string.", "custom_id")
    if len(custom_id) > MAX_CUSTOM_ID_CHARS:
        return error(
            "invalid_custom_id",
            f"'custom_id' is longer than {MAX_CUSTOM_ID_CHARS} characters.",
            "custom_id",
        )
    if custom_id in seen:
        return error(
            "duplicate_custom_id",
            f"'custom_id' '{custom_id[:64]}' is used by an earlier line; each must be unique.",
            "custom_id",
        )
    seen.add(custom_id)
    if line.get("method") != "POST":
        return error("invalid_method", "'method' must be 'POST'.", "method")
    if line.get("url") not in urls:
        return error(
            "mismatched_url",
            f"'url' must be the batch's endpoint '{urls[0]}'; got '{str(line.get('url'))[:64]}'.",
            "url",
        )
    body = line.get("body")
    if not isinstance(body, dict):
        return error("invalid_body", "'body' must be a JSON object.", "body")
    if not isinstance(body.get("model"), str) or not body["model"]:
        return error("missing_model", "'body.model' must be a non-empty string.", "body.model")
    unknown = set(line) - {"custom_id", "method", "url", "body"}
    if unknown:
        return error(
            "unknown_field", f"unknown field '{sorted(unknown)[0][:64]}'.", sorted(unknown)[0]
        )
    return InputLine(number - 1, custom_id, body)
