"""Kept Responses API answers: size limit, retention, team scope. The JSON texts
are the edge's; this service only keeps them, per team, until they expire."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from core.errors import Kind, ServiceError
from services.files.records import KeptResponse
from services.files.store import FileStore

log = logging.getLogger(__name__)


def response_not_found(response_id: str) -> ServiceError:
    return ServiceError(
        Kind.NOT_FOUND,
        "RESPONSE_NOT_FOUND",
        f"Response with id '{response_id}' not found.",
        "response_id",
    )


class ResponseKeeper:
    def __init__(
        self,
        store: FileStore,
        ttl_s: int,
        max_bytes: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self.clock = clock

    async def put(self, record: KeptResponse) -> int:
        """Keep it; answers until when."""
        if not record.id or not record.team:
            raise ServiceError(
                Kind.INVALID_ARGUMENT, "RESPONSE_INVALID", "A response needs an id and a team."
            )
        size = sum(
            len(text.encode())
            for text in (record.response_json, record.input_items_json, record.conversation_json)
        )
        if size > self.max_bytes:
            raise ServiceError(
                Kind.INVALID_ARGUMENT,
                "RESPONSE_TOO_LARGE",
                f"The response and its conversation take {size} bytes; at most "
                f"{self.max_bytes} can be stored.",
                "store",
            )
        now = int(self.clock())
        latest = now + self.ttl_s
        expires_at = min(record.expires_at, latest) if record.expires_at > 0 else latest
        kept = KeptResponse(**{**record.__dict__, "expires_at": expires_at})
        if not await asyncio.to_thread(self.store.put_response, kept):
            raise ServiceError(
                Kind.INVALID_ARGUMENT,
                "RESPONSE_EXISTS",
                f"A response with id '{record.id}' is already stored.",
                "response_id",
            )
        return expires_at

    async def get(self, team: str, response_id: str) -> KeptResponse:
        record = await asyncio.to_thread(
            self.store.get_response, team, response_id, int(self.clock())
        )
        if record is None:
            raise response_not_found(response_id)
        return record

    async def delete(self, team: str, response_id: str) -> None:
        if not await asyncio.to_thread(
            self.store.delete_response, team, response_id, int(self.clock())
        ):
            raise response_not_found(response_id)

    async def purge_expired(self) -> int:
        purged = await asyncio.to_thread(self.store.purge_responses, int(self.clock()))
        if purged:
            log.info("expired responses purged", extra={"count": purged})
        return purged
