"""The id of the request being served, printed on every log line written for it.

The edge sets it from the HTTP request; a service sets it from the call (see
services/common/interceptors.py). Each request or call runs in its own task,
whose context keeps the value apart from every other's.
"""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar

REQUEST_ID: ContextVar[str] = ContextVar("request_id", default="")

# What a caller's id may be: safe in a log line, an HTTP header and gRPC metadata.
SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def sane_request_id(given: str | None) -> str:
    """The caller's id if it is safe (`SAFE_REQUEST_ID`), else a new one: an
    unsafe id is never logged or forwarded."""
    if given and SAFE_REQUEST_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex
