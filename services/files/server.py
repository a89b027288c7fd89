"""Build and run the files service: store, blob folder, extractor, purge task."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aqueduct.files.v1 import files_pb2, files_pb2_grpc

from services.common.grpc_server import GrpcService, ServiceHost
from services.common.identity import EDGE, Access
from services.common.private import private_database
from services.files.batch_servicer import BatchesServicer
from services.files.batch_store import BatchStore
from services.files.batches import BatchBook
from services.files.config import Settings
from services.files.extractor import Extractor
from services.files.kept_responses import ResponseKeeper
from services.files.library import FileLibrary, Limits
from services.files.metrics import StoredBytes
from services.files.servicer import FilesServicer
from services.files.storage import LocalBlobStore
from services.files.store import FileStore

log = logging.getLogger(__name__)

SERVICE_NAME = files_pb2.DESCRIPTOR.services_by_name["FilesService"].full_name
BATCHES_SERVICE_NAME = files_pb2.DESCRIPTOR.services_by_name["BatchesService"].full_name
# With mTLS the edge calls as itself; any other caller with a certificate from
# the CA presents an API key and is scoped to it (services.common.key_scope).
# Batches are the edge's batch worker's alone: no key scoping for them (yet).
ACCESS = Access(
    {SERVICE_NAME: frozenset({EDGE}), BATCHES_SERVICE_NAME: frozenset({EDGE})},
    keyed=frozenset({SERVICE_NAME}),
)


class FilesServer(GrpcService):
    name = "files"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = FileStore(settings.database_url)
        self.blobs = LocalBlobStore(settings.storage_dir)
        self.extractor = Extractor(
            settings.extract_timeout_s, settings.extract_workers, idle_s=settings.extract_idle_s
        )
        self.library = FileLibrary(
            self.store,
            self.blobs,
            self.extractor,
            Limits(
                max_file_bytes=settings.max_file_bytes,
                team_quota_bytes=settings.team_quota_bytes,
                max_extract_bytes=settings.max_extract_bytes,
            ),
        )
        self.responses = ResponseKeeper(
            self.store, settings.responses_ttl_s, settings.max_response_bytes
        )
        self.host = ServiceHost(
            settings.address, [SERVICE_NAME, BATCHES_SERVICE_NAME], access=ACCESS
        )
        files_pb2_grpc.add_FilesServiceServicer_to_server(
            FilesServicer(self.library, self.responses), self.host.server
        )
        self.batches = BatchBook(BatchStore(self.store), self.library)
        files_pb2_grpc.add_BatchesServiceServicer_to_server(
            BatchesServicer(self.batches), self.host.server
        )
        stored = StoredBytes(self.store)
        self.host.metrics.add(stored)
        self.host.metrics.before_scrape.append(stored.refresh)
        self._purger: asyncio.Task[None] | None = None

    async def prepare(self) -> None:
        # Before the port takes calls: none may find the tables missing.
        await asyncio.to_thread(private_database, self.settings.database_url)
        await asyncio.to_thread(self.store.migrate)

    async def ready(self) -> None:
        await asyncio.to_thread(self.blobs.prepare)
        swept = await asyncio.to_thread(self.blobs.sweep_incomplete)
        if swept:
            log.info("removed incomplete uploads", extra={"count": swept})
        self._purger = asyncio.create_task(self._purge_forever())

    async def close(self) -> None:
        if self._purger is not None:
            self._purger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._purger
        await self.extractor.close()
        await asyncio.to_thread(self.store.close)

    async def _purge_forever(self) -> None:
        while True:
            try:
                await self.library.purge_expired()
                await self.responses.purge_expired()
            except Exception:
                log.exception("purging expired files failed; retrying later")
            await asyncio.sleep(self.settings.purge_interval_s)


def from_env() -> FilesServer:
    return FilesServer(Settings.from_env())
