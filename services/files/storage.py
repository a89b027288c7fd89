"""Where file bytes live: a small interface, and a local-folder implementation.

A shared volume works with `LocalBlobStore` as it is; an S3-compatible store
implements the same three operations (write via a committable writer, read as a
stream, delete). Every method blocks: async callers run them in a worker thread.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
from pathlib import Path
from typing import BinaryIO, Protocol

from services.common.private import create_private_file, private_dir
from services.files.records import is_file_id


class BlobWriter(Protocol):
    def write(self, data: bytes) -> None: ...

    def commit(self) -> None:
        """Make the bytes durable and visible under the file id."""

    def abort(self) -> None:
        """Forget everything written; idempotent, and a no-op after commit."""


class BlobStore(Protocol):
    def writer(self, file_id: str) -> BlobWriter:
        """A writer for a new file; must do no I/O until its first write."""

    def open(self, file_id: str) -> BinaryIO:
        """The bytes for reading; FileNotFoundError if there are none."""

    def delete(self, file_id: str) -> None:
        """Remove the bytes; a missing file is not an error."""

    def sweep_incomplete(self) -> int:
        """Remove leftovers of writes that never committed (a crash); how many."""


class LocalBlobStore:
    """Files under `root/<2 chars>/<file id>`; writes go to `root/.incoming`
    first, are fsynced, then renamed into place, so a reader never sees a
    half-written file and a failed write leaves nothing behind. Folders are
    0700 and files 0600 (services/common/private.py)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.incoming = root / ".incoming"

    def prepare(self) -> None:
        private_dir(self.root)
        private_dir(self.incoming)

    def path(self, file_id: str) -> Path:
        if not is_file_id(file_id):
            raise ValueError(f"not a file id: {file_id!r}")
        return self.root / file_id[5:7] / file_id

    def writer(self, file_id: str) -> LocalWriter:
        final = self.path(file_id)
        temporary = self.incoming / f"{file_id}.{secrets.token_hex(4)}.part"
        return LocalWriter(temporary, final)

    def open(self, file_id: str) -> BinaryIO:
        return self.path(file_id).open("rb")

    def delete(self, file_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(file_id).unlink()

    def sweep_incomplete(self) -> int:
        removed = 0
        for leftover in self.incoming.glob("*.part"):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
                removed += 1
        return removed


class LocalWriter:
    """Creating one does no I/O (the temporary file opens with the first write),
    so a caller cancelled at any await cannot leave a file it never knew of."""

    def __init__(self, temporary: Path, final: Path) -> None:
        self.temporary = temporary
        self.final = final
        self._lock = threading.Lock()  # abort may race a write on another thread
        self._handle: BinaryIO | None = None
        self._finished = False  # committed or aborted: no more writes
        self._committed = False

    def _open(self) -> BinaryIO:
        if self._finished:
            raise ValueError("write after commit or abort")
        if self._handle is None:
            self._handle = os.fdopen(create_private_file(self.temporary), "wb")
        return self._handle

    def write(self, data: bytes) -> None:
        with self._lock:
            self._open().write(data)

    def commit(self) -> None:
        with self._lock:
            handle = self._open()
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
            self._handle = None
            self._finished = True
            if not self.final.parent.is_dir():
                private_dir(self.final.parent)
            os.replace(self.temporary, self.final)
            _fsync_dir(self.final.parent)
            self._committed = True

    def abort(self) -> None:
        with self._lock:
            self._finished = True
            if self._handle is not None:
                self._handle.close()
                self._handle = None
            if not self._committed:
                with contextlib.suppress(FileNotFoundError):
                    self.temporary.unlink()


def _fsync_dir(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
