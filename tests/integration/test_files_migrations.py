"""The files service's Alembic migrations where they run for real: `python -m
services.files` adopting a database made before migrations, and auth and files
sharing one PostgreSQL database (this machine's server; skipped without it)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy

from services.auth import store as auth_store
from services.auth.store import KeyStore
from services.files import batch_store
from services.files import store as files_store
from services.files.records import FileRecord
from services.files.store import FileStore
from tests.processes import free_port, serving, spawn, stop, wait_for
from tests.schema_checks import drift, revision, shape
from tests.services_available import POSTGRES, POSTGRES_ADMIN_URL, listening

NOW = 1_700_000_000
FILES_HEAD = "0004"  # 0002: batches, 0003: stored_responses, 0004: batch line starts

needs_postgres = pytest.mark.skipif(
    not listening(POSTGRES), reason="PostgreSQL is not running on 127.0.0.1:5432"
)


def record(number: int) -> FileRecord:
    return FileRecord(
        id=f"file-{number:024d}",
        team="t",
        filename=f"{number}.txt",
        purpose="user_data",
        bytes=10 * number,
        created_at=NOW + number,
        content_type="text/plain",
    )


def make_legacy(url: str, *numbers: int) -> None:
    """A `files` table as the service made it before migrations, with some rows."""
    legacy = FileStore(url)
    files_store.metadata.create_all(
        legacy.engine,
        tables=[files_store.FILES],
    )
    for number in numbers:
        assert legacy.insert_if_fits(record(number), quota_bytes=0) == (True, 0)
    legacy.close()


def test_the_files_service_started_from_the_repository_adopts_a_legacy_database(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'data' / 'aqueduct.db'}"
    (tmp_path / "data").mkdir()
    make_legacy(url, 1, 2)
    address = f"127.0.0.1:{free_port()}"
    log = tmp_path / "files.log"
    process = spawn(
        ["-m", "services.files"],
        {
            "AQUEDUCT_DATA_DIR": str(tmp_path / "data"),
            "AQUEDUCT_FILES_ADDR": address,
            "AQUEDUCT_EXTRACT_WORKERS": "1",
        },
        log,
    )
    try:
        wait_for(lambda: serving(address) or process.poll() is not None, 60, "files SERVING")
        assert process.poll() is None, log.read_text()
    finally:
        assert stop(process) == 0, log.read_text()

    store = FileStore(url)
    try:
        assert revision(store.engine, files_store.VERSION_TABLE) == FILES_HEAD
        assert store.page("t", NOW, purpose=None, limit=10, after=None, ascending=True) == (
            [record(1), record(2)],
            False,
        )
    finally:
        store.close()


@pytest.fixture
def new_database() -> Iterator[Callable[[], str]]:
    """Makes empty PostgreSQL databases on demand and drops them afterwards."""
    admin = sqlalchemy.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    names: list[str] = []

    def make() -> str:
        name = f"aqueduct_test_{uuid.uuid4().hex[:12]}"
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
        names.append(name)
        return POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"

    yield make
    with admin.connect() as connection:
        for name in names:
            connection.execute(sqlalchemy.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


@needs_postgres
def test_auth_and_files_migrate_one_postgres_database(
    new_database: Callable[[], str],
) -> None:
    url = new_database()
    keys, files = KeyStore(url), FileStore(url)
    reference = FileStore(new_database())
    try:
        keys.migrate()
        files.migrate()
        keys.migrate()  # each again: a restart finds nothing to do
        files.migrate()
        files_store.metadata.create_all(reference.engine)

        assert revision(keys.engine, auth_store.VERSION_TABLE) == "0005"
        assert revision(files.engine, files_store.VERSION_TABLE) == FILES_HEAD
        assert drift(keys.engine, auth_store.metadata) == []
        assert drift(files.engine, files_store.metadata) == []
        assert drift(files.engine, batch_store.batch_metadata) == []
        assert shape(files.engine, "files") == shape(reference.engine, "files")
        tables = set(sqlalchemy.inspect(files.engine).get_table_names())
        assert "alembic_version" not in tables

        assert files.insert_if_fits(record(1), quota_bytes=1000) == (True, 0)
        assert files.insert_if_fits(record(2), quota_bytes=1000) == (True, 10)
        assert files.get("t", record(2).id, NOW) == record(2)
        with pytest.raises(sqlalchemy.exc.IntegrityError):
            files.insert_if_fits(record(1), quota_bytes=0)
    finally:
        keys.close()
        files.close()
        reference.close()


@needs_postgres
def test_a_legacy_postgres_files_table_is_stamped_and_keeps_its_rows(
    new_database: Callable[[], str],
) -> None:
    url = new_database()
    keys = KeyStore(url)
    keys.migrate()
    make_legacy(url, 1, 2, 3)
    files = FileStore(url)
    try:
        files.migrate()
        assert revision(files.engine, files_store.VERSION_TABLE) == FILES_HEAD
        assert revision(keys.engine, auth_store.VERSION_TABLE) == "0005"
        assert drift(files.engine, files_store.metadata) == []
        assert files.team_usage("t", NOW) == 60
        # The serial sequence the old table made keeps counting past its rows.
        assert files.insert_if_fits(record(4), quota_bytes=1000) == (True, 60)
        listed = files.page("t", NOW, purpose=None, limit=10, after=None, ascending=True)
        assert listed == ([record(n) for n in (1, 2, 3, 4)], False)
    finally:
        keys.close()
        files.close()


def migrate_together(
    store: KeyStore | FileStore, start: threading.Barrier, failures: list[BaseException]
) -> None:
    start.wait()
    try:
        store.migrate()
    except BaseException as error:
        failures.append(error)


@needs_postgres
@pytest.mark.parametrize("service", ["auth", "files"])
def test_replicas_starting_together_on_a_new_postgres_database_all_migrate(
    new_database: Callable[[], str], service: str
) -> None:
    """Four replicas of one service migrating one empty database at the same
    moment (`docker compose up --scale`): every one comes up."""
    for _ in range(3):
        url = new_database()
        stores = [KeyStore(url) if service == "auth" else FileStore(url) for _ in range(4)]
        start = threading.Barrier(len(stores))
        failures: list[BaseException] = []

        threads = [
            threading.Thread(target=migrate_together, args=(s, start, failures)) for s in stores
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        for store in stores:
            store.close()
        assert failures == []
        table = auth_store.VERSION_TABLE if service == "auth" else files_store.VERSION_TABLE
        check = KeyStore(url)
        assert revision(check.engine, table) == ("0005" if service == "auth" else FILES_HEAD)
        check.close()
