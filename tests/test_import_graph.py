"""No import circle in gluon_tricks/: data flows one way (STYLE.md), and a circle, even
through an import inside a function, means two modules each need the other to be read.

The graph is read from the source with `ast`, so it sees deferred imports that running the
code would only meet on some paths.
"""
from __future__ import annotations

import ast
from pathlib import Path

import gluon_tricks

PACKAGE = Path(gluon_tricks.__file__).resolve().parent


def module_name(path: Path) -> str:
    name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return name.removesuffix(".__init__")


def import_graph() -> dict[str, set[str]]:
    """{module: the package's modules it imports anywhere in its file}."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from gluon_tricks import engine` imports the module gluon_tricks.engine
                targets.update([node.module] + [f"{node.module}.{a.name}" for a in node.names])
        # The package itself (its __init__) is left out: every submodule import passes through it.
        graph[name] = {t for t in targets if t in modules and t not in (name, PACKAGE.name)}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle as [a, b, ..., a], or None (depth-first search, three colours)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def test_find_cycle_on_known_graphs():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": set(), "b": {"c"}, "c": {"b"}}) == ["b", "c", "b"]


def test_the_package_has_no_import_circle():
    graph = import_graph()
    assert "gluon_tricks.engine" in graph and graph["gluon_tricks.cli"], "the graph was not read"
    cycle = find_cycle(graph)
    assert cycle is None, f"import circle: {' -> '.join(cycle)}; move the shared fact down a layer (paths.py, runner.py)"
