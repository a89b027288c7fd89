"""Batches as the domain sees them: ids, statuses, records. No I/O here."""

from __future__ import annotations

import re
import secrets
import string
from dataclasses import dataclass, field

_ID_ALPHABET = string.ascii_letters + string.digits
_ID_RE = re.compile(r"^batch_[A-Za-z0-9]{24}$")

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
COMPLETION_WINDOWS = {"24h": 24 * 3600}
# Statuses a worker still has to act on; the rest are final.
ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")
FINAL = ("failed", "completed", "expired", "cancelled")
# What FinishBatch may end a batch as, and the timestamp each one sets.
FINISHED_AT = {
    "completed": "completed_at",
    "cancelled": "cancelled_at",
    "expired": "expired_at",
    "failed": "failed_at",
}


def new_batch_id() -> str:
    return "batch_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


def is_batch_id(value: str) -> bool:
    return bool(_ID_RE.match(value))


@dataclass(frozen=True)
class BatchError:
    code: str
    message: str
    param: str = ""
    line: int = 0  # 1-based; 0: not about one line


@dataclass(frozen=True)
class LineResult:
    index: int  # 0-based line of the input file
    custom_id: str
    ok: bool
    line: bytes  # the output (or error) file's JSONL line, without newline
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True)
class BatchRecord:
    id: str
    team: str
    key_id: str
    endpoint: str
    input_file_id: str
    completion_window: str
    status: str
    created_at: int
    expires_at: int
    metadata: dict[str, str] = field(default_factory=dict)
    output_file_id: str = ""
    error_file_id: str = ""
    errors: tuple[BatchError, ...] = ()
    total: int = 0
    completed: int = 0
    failed: int = 0
    in_progress_at: int = 0
    finalizing_at: int = 0
    completed_at: int = 0
    failed_at: int = 0
    expired_at: int = 0
    cancelling_at: int = 0
    cancelled_at: int = 0
    model: str = ""  # the one model the lines ask for; "" when several
    input_tokens: int = 0  # summed over the lines that succeeded
    output_tokens: int = 0
