"""No import cycles inside tf_jupyter or tf_remoting: every module-to-module import, lazy ones (inside a function)
included, forms a graph without cycles. Imports under `if TYPE_CHECKING:` do not run and do not count."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
PACKAGES = {"tf_jupyter": ROOT / "tf_jupyter", "tf_remoting": ROOT / "remoting" / "tf_remoting"}


def modules(package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package (generated code aside)."""
    base = PACKAGES[package]
    out = {}
    for path in sorted(base.rglob("*.py")):
        parts = path.relative_to(base).with_suffix("").parts
        if "_proto" in parts:
            continue
        name = ".".join((package, *parts[:-1])) if parts[-1] == "__init__" else ".".join((package, *parts))
        out[name] = path
    return out


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported(module: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that `module` imports (at any depth of its code)."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking_only(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in known else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    # `import a.b.c` needs a.b.c; the nearest known module stands for names that are not modules
    out = set()
    for name in found:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name and name != module:
            out.add(name)
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def import_graph(package: str) -> dict[str, set[str]]:
    found = modules(package)
    known = set(found)
    return {name: imported(name, path, known) for name, path in found.items()}


def test_the_walker_sees_a_cycle() -> None:
    """The check can fail: a two-module circle and a three-module one are found, a chain is not."""
    graph = {"p.a": {"p.b"}, "p.b": {"p.a"}, "p.c": {"p.d"}, "p.d": {"p.e"}, "p.e": {"p.c"}, "p.f": {"p.a"}}
    assert cycles(graph) == [["p.a", "p.b"], ["p.c", "p.d", "p.e"]]


def test_the_walker_reads_lazy_and_relative_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from pkg.b import thing\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\n"
                              "from . import c\n")
    (pkg / "c.py").write_text("")
    known = {"pkg", "pkg.a", "pkg.b", "pkg.c"}
    assert imported("pkg.a", pkg / "a.py", known) == {"pkg.b"}
    assert imported("pkg.b", pkg / "b.py", known) == {"pkg.c"}  # TYPE_CHECKING imports do not run


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_no_import_cycles(package: str) -> None:
    # In a fresh interpreter: CPython 3.11's ast.parse can raise "SystemError: AST constructor recursion
    # depth mismatch" in a process that earlier tests left with a different recursion depth.
    proc = subprocess.run([sys.executable, __file__, package], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    size, found = json.loads(proc.stdout)
    assert size > 5, proc.stdout  # the package was found
    assert not found, "import cycles (each a set of modules that import each other, lazily or not): " + "; ".join(
        " <-> ".join(c) for c in found)


if __name__ == "__main__":  # python test_import_cycles.py PACKAGE: [modules, cycles] as JSON
    graph = import_graph(sys.argv[1])
    print(json.dumps([len(graph), cycles(graph)]))
