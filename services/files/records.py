"""Files as the domain sees them: ids, names, purposes, records. No I/O here."""

from __future__ import annotations

import re
import secrets
import string
from dataclasses import dataclass

# OpenAI: "files with purpose=batch expire after 30 days" unless told otherwise.
DEFAULT_EXPIRY_S = {"batch": 30 * 24 * 3600, "batch_output": 30 * 24 * 3600}
MAX_FILENAME_CHARS = 255

_ID_ALPHABET = string.ascii_letters + string.digits
_ID_RE = re.compile(r"^file-[A-Za-z0-9]{24}$")
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


def new_file_id() -> str:
    return "file-" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


def is_file_id(value: str) -> bool:
    """Ids are checked before they name anything on disk or in a query."""
    return bool(_ID_RE.match(value))


def clean_filename(name: str) -> str:
    """The last path component, without control characters, at most 255 characters."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    return _UNSAFE.sub("", base).strip()[:MAX_FILENAME_CHARS]


@dataclass(frozen=True)
class UploadMetadata:
    team: str
    filename: str
    purpose: str
    content_type: str = ""
    expires_after_s: int = 0  # 0: the purpose's default (usually never)


@dataclass(frozen=True)
class FileRecord:
    id: str
    team: str
    filename: str
    purpose: str
    bytes: int
    created_at: int
    content_type: str
    expires_at: int | None = None


@dataclass(frozen=True)
class KeptResponse:
    """A Responses API answer the edge asked to keep (JSON texts, opaque here)."""

    id: str
    team: str
    created_at: int
    expires_at: int
    response_json: str
    input_items_json: str
    conversation_json: str
