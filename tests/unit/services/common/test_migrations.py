"""The start-up check that skips Alembic for a database already at the newest revision."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine

from services.common import migrations

ROOT = Path(__file__).resolve().parents[4]
HISTORIES = [ROOT / "services" / name / "migrations" for name in ("auth", "files")]


@pytest.mark.parametrize("directory", HISTORIES, ids=lambda d: d.parent.name)
def test_the_head_read_from_the_files_is_alembics(directory: Path) -> None:
    config = Config()
    config.set_main_option("script_location", str(directory))
    assert (
        migrations.head_revision(directory)
        == ScriptDirectory.from_config(config).get_current_head()
    )


def test_two_heads_are_left_to_alembic(tmp_path: Path) -> None:
    versions = tmp_path / "versions"
    versions.mkdir()
    for name, down in (("a", None), ("b", "a"), ("c", "a")):
        parent = f'"{down}"' if down else "None"
        (versions / f"{name}.py").write_text(f'revision = "{name}"\ndown_revision = {parent}\n')
    assert migrations.head_revision(tmp_path) is None


def test_an_up_to_date_database_is_not_migrated_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'auth.db'}")
    directory, table = HISTORIES[0], "auth_alembic_version"
    migrations.migrate(engine, directory, table)
    assert migrations.current_revision(engine, table) == migrations.head_revision(directory)
    taken: list[str] = []
    monkeypatch.setattr(migrations, "one_at_a_time", lambda *a: taken.append("lock"))
    migrations.migrate(engine, directory, table)  # at head: returns before the lock or Alembic
    assert taken == []


def test_a_database_in_memory_is_migrated_in_this_process() -> None:
    engine = create_engine("sqlite://")  # another process could not open it
    directory, table = HISTORIES[0], "auth_alembic_version"
    migrations.migrate(engine, directory, table)
    assert migrations.current_revision(engine, table) == migrations.head_revision(directory)


def test_a_failed_upgrade_in_the_child_process_is_raised(tmp_path: Path) -> None:
    (tmp_path / "versions").mkdir()
    (tmp_path / "versions" / "a.py").write_text('revision = "a"\ndown_revision = None\n')
    (tmp_path / "env.py").write_text("raise RuntimeError('a broken migration')\n")
    engine = create_engine(f"sqlite:///{tmp_path / 'broken.db'}")
    with pytest.raises(migrations.MigrationFailed, match="broken_alembic_version"):
        migrations.migrate(engine, tmp_path, "broken_alembic_version")
