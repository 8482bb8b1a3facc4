"""The import graph: each package imports alone, first-party modules import each other at the top
of the file only, and those imports form no cycle (an import inside a function hid three)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("api", "dispatch", "migrations", "models", "saddle", "sweeps", "worker")
# Imports inside a function that name a first-party module, with why they wait. Empty is the goal.
DEFERRED: dict[str, str] = {}


def modules(package: str) -> list[str]:
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        if "versions" in path.parts:  # alembic revisions are loaded by alembic, not imported
            continue
        parts = path.relative_to(ROOT).with_suffix("").parts
        found.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return found


def first_party(name: str | None) -> bool:
    return name is not None and name.split(".")[0] in PACKAGES


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def top_level_imports(path: Path, module: str) -> set[str]:
    """First-party modules imported when ``module`` is (outside functions and TYPE_CHECKING)."""
    out: set[str] = set()
    tree = ast.parse(path.read_text())
    stack: list[ast.AST] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) or _type_checking(node):
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if first_party(a.name)}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and first_party(node.module):
            # ``from pkg import mod`` imports pkg.mod when mod is a module of pkg.
            out |= {f"{node.module}.{a.name}" for a in node.names} | {node.module or ""}
        stack.extend(ast.iter_child_nodes(node))
    return out


def graph() -> dict[str, set[str]]:
    known = {m: ROOT / (m.replace(".", "/") + ".py") for p in PACKAGES for m in modules(p)}
    for m in list(known):
        if not known[m].exists():
            known[m] = ROOT / m.replace(".", "/") / "__init__.py"
    edges = {}
    for module, path in known.items():
        targets = {t for t in top_level_imports(path, module) if t in known}
        # Importing a.b.c runs a/__init__ and a/b/__init__ first, unless the importer is inside them
        # (its own packages are already being initialized).
        parents = {".".join(t.split(".")[:i]) for t in targets for i in range(1, t.count(".") + 1)}
        own = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 2)}
        edges[module] = (targets | (parents & set(known))) - own
    return edges


def test_first_party_modules_import_each_other_at_the_top_of_the_file() -> None:
    hidden = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            if rel in DEFERRED or "versions" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                for inner in ast.walk(node):
                    names = (
                        [a.name for a in inner.names]
                        if isinstance(inner, ast.Import)
                        else [inner.module]
                        if isinstance(inner, ast.ImportFrom)
                        else []
                    )
                    hidden += [f"{rel}:{inner.lineno} {n}" for n in names if first_party(n)]
    assert not hidden, "imports inside functions hide the import graph:\n" + "\n".join(hidden)


def test_the_first_party_import_graph_has_no_cycle() -> None:
    edges = graph()
    state: dict[str, int] = {}  # 1 on the path, 2 done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(edges[module]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(edges):
        if module not in state and (cycle := visit(module)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_imports_alone(package: str) -> None:
    """Every module of the package, in a fresh interpreter where nothing else was imported first."""
    names = [m for m in modules(package) if m != "migrations.env"]  # alembic's script, run by alembic
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    out = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
