"""The id of the request being served, printed on every log line written for it.

The edge sets it from the HTTP request; a service sets it from the call (see
services/common/interceptors.py). Each request or call runs in its own task,
whose context keeps the value apart from every other's.
"""

from __future__ import annotations

from contextvars import ContextVar

REQUEST_ID: ContextVar[str] = ContextVar("request_id", default="")
