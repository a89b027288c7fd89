"""The edge ships alone: it imports the generated code and shared code, never a
service's domain modules."""

from __future__ import annotations

import ast
from pathlib import Path

EDGE = Path(__file__).parents[3] / "edge"
SHARED = ("services.common",)  # the shared core (config, logging, status mapping)


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_the_edge_imports_no_service_s_domain_module() -> None:
    sources = sorted(EDGE.rglob("*.py"))
    assert len(sources) > 10
    domain = {
        f"{path.relative_to(EDGE)}: {name}"
        for path in sources
        for name in imported_modules(path)
        if name.split(".")[0] == "services" and not name.startswith(SHARED)
    }
    assert domain == set()
