"""Private data at rest, without breaking the SQLite connections already open."""

from __future__ import annotations

import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

from services.common.private import private_database

WRITE_FROM_ANOTHER_PROCESS = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=0)
try:
    db.execute("BEGIN IMMEDIATE")
except sqlite3.OperationalError as error:
    print(error)
else:
    print("wrote")
"""


def test_a_new_database_file_is_created_private(tmp_path: Path) -> None:
    database = tmp_path / "data" / "aqueduct.db"
    private_database(f"sqlite:///{database}")
    assert stat.S_IMODE(database.stat().st_mode) == 0o600
    assert stat.S_IMODE(database.parent.stat().st_mode) == 0o700


def test_an_open_connection_keeps_its_locks(tmp_path: Path) -> None:
    # Two services' stores in one process (the tests' in-process stack): the
    # second's start must not drop the first's locks on the shared file (closing
    # any descriptor of a file drops every POSIX lock the process holds on it),
    # or another process (a migration child) writes through them.
    database = tmp_path / "aqueduct.db"
    holder = sqlite3.connect(database, isolation_level=None)
    holder.execute("CREATE TABLE t (x INTEGER)")
    holder.execute("BEGIN IMMEDIATE")  # the write lock, held
    private_database(f"sqlite:///{database}")
    other = subprocess.run(
        [sys.executable, "-c", WRITE_FROM_ANOTHER_PROCESS, str(database)],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    assert other.stdout.strip() == "database is locked"
    holder.execute("ROLLBACK")
    holder.close()
