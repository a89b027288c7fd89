"""Data at rest readable by the service's own user only: folders 0700, files
0600, whatever umask the process started with (keys, the usage ledger and
every team's files live there).

Modes are set explicitly, not left to the umask, and folders that exist from an
older version are tightened at start-up.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600
SQLITE_SIDE_FILES = ("-journal", "-wal", "-shm")


def restrict_umask() -> None:
    """Whatever this process creates from now on is at most 0700 / 0600, also
    files that libraries create (SQLite's journals, temporary files)."""
    os.umask(0o077)


def private_dir(path: Path) -> Path:
    """Create `path` (and missing parents) as 0700 folders; make it 0700 if it exists."""
    missing = []
    cursor = path
    while not cursor.exists():
        missing.append(cursor)
        cursor = cursor.parent
    for folder in reversed(missing):
        folder.mkdir(mode=DIR_MODE, exist_ok=True)
    for folder in {path, *missing}:  # exactly 0700, whatever the umask took away
        _chmod(folder, DIR_MODE)
    return path


def create_private_file(path: Path, flags: int = os.O_WRONLY | os.O_EXCL) -> int:
    """Open `path` for writing, created 0600 (an existing one, with O_TRUNC,
    made 0600 too); returns the descriptor."""
    descriptor = os.open(path, flags | os.O_CREAT, FILE_MODE)
    os.fchmod(descriptor, FILE_MODE)
    return descriptor


def private_database(url: str) -> None:
    """For a SQLite database file: created 0600 before SQLite opens it (SQLite
    gives its journal and WAL files the database's mode), files left by an older
    version made 0600, a missing folder created 0700 (an existing one is left as
    it is: it may be any folder). Other databases: nothing."""
    from sqlalchemy.engine import make_url  # here: the supervisor imports this module too

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return
    database = Path(parsed.database).resolve()
    if not database.parent.exists():
        private_dir(database.parent)
    if not database.exists():
        # Opened only when missing: closing any descriptor of a file drops every
        # POSIX lock this process holds on it, and SQLite's connections here (another
        # service's store in the same process) would lose theirs to other processes.
        with contextlib.suppress(FileExistsError):
            os.close(os.open(database, os.O_RDONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    for path in (database, *(database.with_name(database.name + s) for s in SQLITE_SIDE_FILES)):
        if path.exists():
            _chmod(path, FILE_MODE)


def _chmod(path: Path, mode: int) -> None:
    try:
        os.chmod(path, mode)
    except PermissionError:  # not ours (a mounted volume): say so, do not refuse to start
        import logging  # here: the supervisor imports this module and logs nothing (0.8 MiB)

        logging.getLogger(__name__).warning(
            "cannot restrict the mode of %s", path, extra={"path": str(path)}
        )
