"""Data at rest is private to the services' user whatever the umask: the data
folder and every folder in it 0700, the database, stored files and the
bootstrap key 0600 (issue #20: other local users read every team's files)."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import openai

from services.auth.authority import bootstrap_admin
from services.auth.store import KeyStore
from services.common.private import private_database, private_dir
from tests.stack import Stack


def modes(root: Path) -> dict[str, int]:
    """Every path under `root` (and root itself) -> its permission bits."""
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def test_data_folder_and_everything_in_it_are_private_under_umask_022(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)  # as an older version, or `mkdir`, left it
    previous = os.umask(0o022)
    try:
        stack = Stack(data_dir=data).start()
        try:
            client = stack.sdk()
            uploaded = client.files.create(
                file=("notes.txt", io.BytesIO(b"team secrets\n")), purpose="user_data"
            )
            assert client.files.content(uploaded.id).read() == b"team secrets\n"
            client.chat.completions.create(  # a ledger row too
                model="smollm2-135m-instruct",
                messages=[{"role": "user", "content": "Hi"}],
                max_tokens=1,
            )
        except openai.APIError as error:
            raise AssertionError(f"the stack did not serve: {error}") from None
        finally:
            stack.stop()
    finally:
        os.umask(previous)
    found = modes(data)
    assert any(name.endswith(uploaded.id) for name in found)  # the stored file is there
    assert "aqueduct.db" in found
    folders = {n: m for n, m in found.items() if (data / n).is_dir()}
    files = {n: m for n, m in found.items() if n not in folders}
    assert folders and set(folders.values()) == {0o700}, folders
    assert files and set(files.values()) == {0o600}, files


def test_bootstrap_key_and_an_older_database_are_made_private(tmp_path: Path) -> None:
    """An installation from before: a 0644 database beside a 0755 folder."""
    data = tmp_path / "var"
    data.mkdir(mode=0o755)
    database = data / "aqueduct.db"
    database.touch(mode=0o644)
    (data / "aqueduct.db-wal").touch(mode=0o644)
    previous = os.umask(0o022)
    try:
        private_dir(data)
        url = f"sqlite:///{database}"
        private_database(url)
        store = KeyStore(url)
        store.migrate()
        bootstrap_admin(store, data, None)
        store.close()
    finally:
        os.umask(previous)
    found = modes(data)
    assert found.pop(".") == 0o700
    assert "bootstrap-key" in found
    assert set(found.values()) == {0o600}, found
