"""No module-level exception instance is ever raised.

Raising the same instance again and again makes Python extend its traceback each
time, so every raise keeps the frames (and requests) of all the earlier ones
alive: edge/auth.py once leaked ~9 KiB per request that way. Errors are made
fresh where they are raised (a small factory function when they are shared).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("core", "edge", "services")


def _name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _error_makers(trees: dict[str, ast.Module]) -> set[str]:
    """Names whose call makes an exception: classes named *Error / *Exception or
    derived from one, and functions annotated to return one (e.g. `invalid`)."""
    makers: set[str] = set()
    changed = True
    while changed:  # a class derived from a maker is a maker too
        changed = False
        for tree in trees.values():
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef) and node.name not in makers:
                    bases = {_name(b) for b in node.bases}
                    if node.name.endswith(("Error", "Exception")) or bases & makers:
                        makers.add(node.name)
                        changed = True
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns:
                returned = ast.unparse(node.returns).strip("'\"")
                if returned in makers or returned.endswith(("Error", "Exception")):
                    makers.add(node.name)
    return makers


def _module_instances(tree: ast.Module, makers: set[str]) -> set[str]:
    """Module-level names bound to a call of an exception maker."""
    names: set[str] = set()
    for node in tree.body:
        value = node.value if isinstance(node, ast.Assign | ast.AnnAssign) else None
        if not isinstance(value, ast.Call):
            continue
        callee = _name(value.func)
        if callee is None or not (callee in makers or callee.endswith(("Error", "Exception"))):
            continue
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def shared_raises(sources: dict[str, str]) -> Iterator[str]:
    """`module:line: raise NAME` for every raise of a module-level exception
    instance, its own or imported (`from m import NAME`, `m.NAME`)."""
    trees = {module: ast.parse(text) for module, text in sources.items()}
    makers = _error_makers(trees)
    instances = {module: _module_instances(tree, makers) for module, tree in trees.items()}
    for module, tree in trees.items():
        visible = {name: name for name in instances[module]}
        modules: dict[str, str] = {}  # local alias -> module
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    local = alias.asname or alias.name
                    if alias.name in instances.get(node.module, ()):
                        visible[local] = alias.name
                    modules[local] = f"{node.module}.{alias.name}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    modules[alias.asname or alias.name] = alias.name
        for node in ast.walk(tree):
            if not isinstance(node, ast.Raise) or node.exc is None:
                continue
            exc = node.exc
            if isinstance(exc, ast.Name) and exc.id in visible:
                yield f"{module}:{node.lineno}: raise {exc.id}"
            elif (
                isinstance(exc, ast.Attribute)
                and isinstance(exc.value, ast.Name)
                and exc.attr in instances.get(modules.get(exc.value.id, ""), ())
            ):
                yield f"{module}:{node.lineno}: raise {ast.unparse(exc)}"


def project_sources() -> dict[str, str]:
    sources = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            module = ".".join(path.relative_to(REPO).with_suffix("").parts)
            sources[module.removesuffix(".__init__")] = path.read_text()
    return sources


def test_no_module_level_exception_instance_is_raised() -> None:
    sources = project_sources()
    assert "edge.auth" in sources and "services.auth.authority" in sources
    found = list(shared_raises(sources))
    assert not found, "raise a fresh exception instead:\n" + "\n".join(found)


def test_the_check_finds_shared_instances_however_they_are_reached() -> None:
    sources = {
        "pkg.errors": (
            "class ApiError(Exception): ...\n"
            "class Special(ApiError): ...\n"
            "def invalid(m: str) -> ApiError: return ApiError(m)\n"
            "GONE = ApiError('gone')\n"
            "BAD: ApiError = invalid('bad')\n"
            "ODD = Special()\n"
            "def fine() -> None:\n"
            "    raise ApiError('fresh')\n"
        ),
        "pkg.user": (
            "from pkg.errors import GONE as G, BAD\n"
            "import pkg.errors as errors\n"
            "def a() -> None:\n    raise G\n"
            "def b() -> None:\n    raise BAD\n"
            "def c() -> None:\n    raise errors.ODD\n"
            "def d(e: Exception) -> None:\n    raise e\n"
        ),
    }
    assert sorted(shared_raises(sources)) == [
        "pkg.user:4: raise G",
        "pkg.user:6: raise BAD",
        "pkg.user:8: raise errors.ODD",
    ]
