"""Which `AQUEDUCT_*` variables a process's code reads, found statically: the
deployment files (compose, Kubernetes) are checked against this, not against a list."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from core.config import DEFAULT_ADDRESSES

ROOT = Path(__file__).resolve().parents[1]
ENV_NAME = re.compile(r"AQUEDUCT_[A-Z0-9_]+")


def _module_file(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_files(entry: str) -> set[Path]:
    """The repository's source files a `python -m <entry>` process imports (statically)."""
    seen: set[Path] = set()
    todo = [entry, f"{entry}.__main__"]
    while todo:
        module = todo.pop()
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages
        path = _module_file(module)
        if path is None or path in seen:
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                todo += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                todo.append(node.module)
                todo += [f"{node.module}.{alias.name}" for alias in node.names]
    return seen


def env_names_read(files: set[Path]) -> set[str]:
    """`AQUEDUCT_*` names that appear as whole string literals in the code, plus the
    `AQUEDUCT_<SERVICE>_ADDR` and `AQUEDUCT_<SERVICE>_METRICS_ADDR` names that
    `f"AQUEDUCT_{service.upper()}_ADDR"` and its like build."""
    names: set[str] = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if ENV_NAME.fullmatch(node.value):
                    names.add(node.value)
            elif isinstance(node, ast.JoinedStr):
                texts = [v.value for v in node.values if isinstance(v, ast.Constant)]
                if texts[:1] == ["AQUEDUCT_"] and texts[-1] in ("_ADDR", "_METRICS_ADDR"):
                    names |= {f"AQUEDUCT_{s.upper()}{texts[-1]}" for s in DEFAULT_ADDRESSES}
    return names
