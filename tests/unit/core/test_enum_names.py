"""The enum <-> string tables derived from the protos say what OpenAI says."""

from __future__ import annotations

from aqueduct.files.v1 import files_pb2
from aqueduct.inference.v1 import inference_pb2

from core.enum_names import BATCH_STATUSES, FILE_PURPOSES, FINISH_REASONS


def test_finish_reasons_are_openais_and_round_trip() -> None:
    assert FINISH_REASONS[inference_pb2.FINISH_REASON_TOOL_CALLS] == "tool_calls"
    assert set(FINISH_REASONS.names) == {"stop", "length", "content_filter", "tool_calls"}
    for value, name in FINISH_REASONS.items():
        assert FINISH_REASONS.by_name[name] == value
    assert inference_pb2.FINISH_REASON_UNSPECIFIED not in FINISH_REASONS


def test_file_purposes_use_openais_spelling() -> None:
    assert FILE_PURPOSES.names == (
        "user_data",
        "assistants",
        "batch",
        "vision",
        "fine-tune",
        "evals",
        "batch_output",  # OpenAI's purpose of a batch's output and error files
    )
    assert FILE_PURPOSES.by_name["fine-tune"] == files_pb2.FILE_PURPOSE_FINE_TUNE
    assert files_pb2.FILE_PURPOSE_UNSPECIFIED not in FILE_PURPOSES


def test_batch_statuses_are_openais() -> None:
    assert BATCH_STATUSES.names == (
        "validating",
        "failed",
        "in_progress",
        "finalizing",
        "completed",
        "expired",
        "cancelling",
        "cancelled",
    )
