"""The files service's schema comes from Alembic: a fresh SQLite database is
migrated, a database made by the old `create_all` (files only) is adopted with its
rows and brought to the head, and
auth and files keep separate histories in one database."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy

from services.auth import store as auth_store
from services.auth.store import VERSION_TABLE as AUTH_VERSION_TABLE
from services.auth.store import KeyStore
from services.files.records import FileRecord
from services.files.store import FILES, VERSION_TABLE, FileStore, metadata
from tests.schema_checks import drift, revision, shape

NOW = 1_700_000_000
HEAD = "0004"  # 0002: batches, 0003: stored_responses, 0004: batch line starts


def _legacy_schema(engine: sqlalchemy.engine.Engine) -> None:
    """What `create_all` made before Alembic: the files table only."""
    metadata.create_all(engine, tables=[FILES])


def record(number: int, team: str = "t") -> FileRecord:
    return FileRecord(
        id=f"file-{number:024d}",
        team=team,
        filename=f"{number}.txt",
        purpose="user_data",
        bytes=10 * number,
        created_at=NOW + number,
        content_type="text/plain",
    )


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'aqueduct.db'}"


def test_a_fresh_database_is_migrated_to_the_models_schema(tmp_path: Path, url: str) -> None:
    store = FileStore(url)
    store.migrate()
    legacy = FileStore(f"sqlite:///{tmp_path / 'legacy.db'}")
    _legacy_schema(legacy.engine)
    try:
        assert revision(store.engine, VERSION_TABLE) == HEAD
        assert drift(store.engine, metadata) == []
        assert shape(store.engine, "files") == shape(legacy.engine, "files")
    finally:
        store.close()
        legacy.close()


def test_the_files_store_works_on_a_migrated_database_and_migrating_again_is_harmless(
    url: str,
) -> None:
    store = FileStore(url)
    store.migrate()
    assert store.insert_if_fits(record(1), quota_bytes=1000) == (True, 0)
    assert store.insert_if_fits(record(2), quota_bytes=1000) == (True, 10)
    store.close()

    again = FileStore(url)
    again.migrate()
    try:
        listed = again.page("t", NOW, purpose=None, limit=10, after=None, ascending=True)
        assert listed == ([record(1), record(2)], False)
        with pytest.raises(sqlalchemy.exc.IntegrityError):  # the id stays unique
            again.insert_if_fits(record(1), quota_bytes=0)
    finally:
        again.close()


def test_a_database_made_by_create_all_is_stamped_and_keeps_its_rows(url: str) -> None:
    legacy = FileStore(url)
    _legacy_schema(legacy.engine)
    for number in (1, 2, 3):
        legacy.insert_if_fits(record(number), quota_bytes=0)
    legacy.close()

    store = FileStore(url)
    store.migrate()
    try:
        assert revision(store.engine, VERSION_TABLE) == HEAD
        assert drift(store.engine, metadata) == []
        assert store.get("t", record(2).id, NOW) == record(2)
        assert store.team_usage("t", NOW) == 60
        assert store.insert_if_fits(record(4), quota_bytes=1000) == (True, 60)
    finally:
        store.close()


def test_an_empty_version_table_beside_a_files_table_is_stamped_too(url: str) -> None:
    """SQLite runs DDL outside the migration's transaction: a start-up killed after
    the table was made but before its revision was written must not wedge the next."""
    legacy = FileStore(url)
    _legacy_schema(legacy.engine)
    legacy.insert_if_fits(record(1), quota_bytes=0)
    with legacy.engine.begin() as connection:
        connection.execute(
            sqlalchemy.text(f"CREATE TABLE {VERSION_TABLE} (version_num VARCHAR(32))")
        )
    legacy.close()

    store = FileStore(url)
    store.migrate()
    try:
        assert revision(store.engine, VERSION_TABLE) == HEAD
        assert store.get("t", record(1).id, NOW) == record(1)
    finally:
        store.close()


@pytest.mark.parametrize("first", ["auth", "files"])
def test_auth_and_files_migrate_one_database_independently(url: str, first: str) -> None:
    keys, files = KeyStore(url), FileStore(url)
    stores = [keys.migrate, files.migrate]
    for migrate in stores if first == "auth" else reversed(stores):
        migrate()
    try:
        assert revision(keys.engine, AUTH_VERSION_TABLE) == "0005"
        assert revision(files.engine, VERSION_TABLE) == HEAD
        tables = set(sqlalchemy.inspect(files.engine).get_table_names())
        assert {"api_keys", "teams", "usage_records", "files"} <= tables
        assert {AUTH_VERSION_TABLE, VERSION_TABLE} <= tables
        assert "alembic_version" not in tables
        assert drift(keys.engine, auth_store.metadata) == []
        assert drift(files.engine, metadata) == []
        assert files.insert_if_fits(record(1), quota_bytes=0) == (True, 0)
        assert keys.all_keys() == []
    finally:
        keys.close()
        files.close()


def test_a_legacy_files_table_beside_migrated_auth_tables_is_stamped(url: str) -> None:
    keys = KeyStore(url)
    keys.migrate()
    legacy = FileStore(url)
    _legacy_schema(legacy.engine)
    legacy.insert_if_fits(record(1), quota_bytes=0)
    legacy.close()

    files = FileStore(url)
    files.migrate()
    try:
        assert revision(files.engine, VERSION_TABLE) == HEAD
        assert revision(keys.engine, AUTH_VERSION_TABLE) == "0005"
        assert files.get("t", record(1).id, NOW) == record(1)
    finally:
        keys.close()
        files.close()
