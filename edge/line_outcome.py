"""What one batch line's request answered, as the batch worker records it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import orjson

from edge.errors import ApiError


@dataclass(frozen=True)
class LineOutcome:
    status: int
    body: bytes  # the JSON body a live request would have been answered
    request_id: str
    # Set when the line was refused before any call by the key's limits (429)
    # or because they could not be checked (503): the worker waits this long and
    # runs the line again instead of failing it.
    retry_after_s: float | None = None
    # Tokens a line that succeeded used (the ledger row's), for the batch's usage.
    input_tokens: int = 0
    output_tokens: int = 0


# Awaited by a line's runner once the line is admitted, right before its request
# goes out: the batch worker marks the line started there, durably, so that a
# line is never sent twice (edge/batch_worker.py). When it raises, nothing went out.
BeforeCall = Callable[[], Awaitable[None]]


def error_outcome(error: ApiError, request_id: str, *, refused: bool = False) -> LineOutcome:
    retry = None
    if refused and error.status in (429, 503):  # a limit, or the limits store down
        retry = float(error.headers.get("retry-after", "1"))
    return LineOutcome(error.status, orjson.dumps(error.body()), request_id, retry)
