"""The package's import graph flows one way: no cycle, and no private name imported across modules.

Read statically with `ast` (every import, lazy ones inside functions included), so a circle hidden
behind a function-level import is found too. A package's `__init__` counts as importing what it
re-exports: importing the package runs those imports.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

PACKAGE = "adaptor_peft"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    # os.walk with followlinks: adaptor_peft/kernels is a symlink to the top-level kernels/ folder
    found = {}
    for folder, _, files in os.walk(ROOT, followlinks=True):
        for f in files:
            if f.endswith(".py"):
                path = Path(folder) / f
                found[_module_name(path)] = path
    return dict(sorted(found.items()))


def _namespaces() -> set[str]:
    """Folders without __init__.py (namespace packages such as adaptor_peft.kernels): no code of their own."""
    return {
        _module_name(Path(folder) / "__init__.py")
        for folder, _, files in os.walk(ROOT, followlinks=True)
        if "__init__.py" not in files and any(f.endswith(".py") for f in files)
    }


def _resolve(current: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = current.split(".") if is_package else current.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> tuple[dict[str, set[str]], list[str]]:
    """(module -> package modules it imports, 'a imports private b._x' findings)."""
    modules = _modules()
    namespaces = _namespaces()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    private: list[str] = []
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[tuple[str, str | None]] = []
            if isinstance(node, ast.Import):
                targets = [(a.name, None) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                src = _resolve(name, is_package, node)
                for alias in node.names:
                    sub = f"{src}.{alias.name}"
                    targets.append((sub, None) if sub in modules else (src, alias.name))
            for target, attr in targets:
                while target and target not in modules and target not in namespaces:
                    target = target.rpartition(".")[0]  # `import a.b.c` -> nearest known module
                if not target or target == name or target in namespaces:
                    continue
                graph[name].add(target)
                if attr and attr.startswith("_") and not attr.startswith("__"):
                    private.append(f"{name} imports {target}.{attr}")
    return graph, private


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_oracle_finds_a_planted_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_import_graph_has_no_cycle():
    graph, _ = import_graph()
    assert len(graph) > 20, "the scan found too few modules"
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_no_private_name_crosses_a_module_border():
    _, private = import_graph()
    assert not private, "\n".join(private)
