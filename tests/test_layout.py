"""The package's shape: no import circle among its modules, no private name imported across modules.

Every import is counted, also those inside functions (the package keeps heavy imports lazy, which is how
circles hid before: nothing failed at import time). A module's package `__init__` re-exporting from its own
submodules is not a circle.
"""
from __future__ import annotations

import ast
from pathlib import Path

import speechtune

ROOT = Path(speechtune.__file__).parent
TESTS = Path(__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str):
    """(imported module, imported names, line) for every speechtune import in a file."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "speechtune":
                yield target, [a.name for a in node.names], node.lineno
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "speechtune":
                    yield a.name, [], node.lineno


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in ROOT.rglob("*.py")}


def _resolve(target: str, names: list[str], modules: dict) -> set[str]:
    """The modules an import loads: `from pkg import sub` names the submodule, else the module itself."""
    out = {f"{target}.{n}" for n in names if f"{target}.{n}" in modules}
    if target in modules and (len(out) < len(names) or not names):
        out.add(target)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for target, names, _ in _imports(path, name):
            for dep in _resolve(target, names, modules):
                # a package's __init__ re-exporting its own submodules, or a submodule importing its package's
                # __init__ for a sibling: neither is a dependency between layers
                if dep != name and not dep.startswith(name + ".") and not (
                        modules[dep].name == "__init__.py" and name.startswith(dep + ".")):
                    graph[name].add(dep)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_circle():
    assert find_cycle(import_graph()) is None


def test_find_cycle_sees_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _private_imports(files, own):
    """`from m import _x`, and `m._x` where `m` names a speechtune module this file imported."""
    modules = _modules()
    bad = []
    for path in files:
        aliases = {}
        for target, names, line in _imports(path, own(path)):
            bad += [f"{path.name}:{line}: {n} from {target}" for n in names if _private(n)]
            aliases.update({n: f"{target}.{n}" for n in names if f"{target}.{n}" in modules})
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                aliases.update({a.asname: a.name for a in node.names if a.asname and a.name in modules})
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and _private(node.attr)):
                bad.append(f"{path.name}:{node.lineno}: {aliases[node.value.id]}.{node.attr}")
    return bad


def test_no_private_name_crosses_a_module():
    assert _private_imports(ROOT.rglob("*.py"), _module_name) == []


def test_tests_use_public_names_only():
    assert _private_imports(TESTS.glob("*.py"), lambda p: "tests." + p.stem) == []
