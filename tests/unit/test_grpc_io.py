"""gRPC's I/O settings reach every process: set first, before grpc is imported."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.grpc_io import LEGACY_IO

ROOT = Path(__file__).resolve().parents[2]
ENTRY_POINTS = [
    "edge/__main__.py",
    "services/auth/__main__.py",
    "services/files/__main__.py",
    "services/inference/__main__.py",
    "tests/conftest.py",
]


@pytest.mark.parametrize("path", ENTRY_POINTS)
def test_each_entry_point_imports_grpc_io_before_anything_else(path: str) -> None:
    tree = ast.parse((ROOT / path).read_text())
    imports = [
        node
        for node in tree.body
        if isinstance(node, ast.Import | ast.ImportFrom)
        and not (isinstance(node, ast.ImportFrom) and node.module == "__future__")
    ]
    first = imports[0]
    assert isinstance(first, ast.Import) and first.names[0].name == "core.grpc_io"


def _experiments_seen(environment: dict[str, str]) -> str:
    code = "import core.grpc_io, grpc, os; print(os.environ['GRPC_EXPERIMENTS'])"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=environment, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "Unknown experiment" not in done.stderr  # this grpcio still has these switches
    return done.stdout.strip()


def test_the_older_io_is_the_default_and_an_operators_choice_wins() -> None:
    base = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    assert _experiments_seen(base) == LEGACY_IO
    chosen = {**base, "GRPC_EXPERIMENTS": "-event_engine_client"}
    assert _experiments_seen(chosen) == "-event_engine_client"
