"""No import circle in gluon_tricks/: data flows one way (STYLE.md), and a circle, even
through an import inside a function, means two modules each need the other to be read.
And every import stays inside the layering docs/package-map.md documents.

The graph is read from the source with `ast`, so it sees deferred imports that running the
code would only meet on some paths.
"""
from __future__ import annotations

import ast
import fnmatch
import re
from pathlib import Path

import gluon_tricks

PACKAGE = Path(gluon_tricks.__file__).resolve().parent
PACKAGE_MAP = PACKAGE.parent / "docs" / "package-map.md"


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
                # `from gluon_tricks.tricks import mixing` imports the module gluon_tricks.tricks.mixing
                # (as `from gluon_tricks.tricks.mixing import Mixer` does), a name otherwise
                targets.update(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                               for a in node.names)
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


def package_map(text: str, files: dict[str, str]) -> tuple[list[str], dict[str, set[str]], set[str]]:
    """From the map's tables: (modules top to bottom, {module: the modules its row names},
    the ground floor's modules). `files` maps a path inside the package (`data/cifar.py`) to
    its module; a row naming no such file raises ValueError."""
    order, allowed, ground, floor = [], {}, set(), ""
    for line in text.splitlines():
        if line.startswith("## "):
            floor = line
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("| `") or len(cells) != 3:
            continue
        (name,) = re.findall(r"`([^`]+)`", cells[0])
        named = set()
        for pattern in [name] + re.findall(r"`([^`]+)`", cells[2]):
            hits = {m for f, m in files.items() if fnmatch.fnmatch(f, pattern)}
            if not hits:
                raise ValueError(f"{PACKAGE_MAP.name} names {pattern!r}, which is no file of {PACKAGE.name}/")
            named |= hits
        module = files[name]
        order.append(module)
        allowed[module] = named - {module}
        if "Ground floor" in floor:
            ground.add(module)
    return order, allowed, ground


def test_package_map_reader_on_a_known_map():
    files = {"cli.py": "p.cli", "engine.py": "p.engine", "tricks/a.py": "p.tricks.a", "tricks/b.py": "p.tricks.b",
             "errors.py": "p.errors"}
    text = """## 1. Top
| file | job | may import |
|---|---|---|
| `cli.py` | commands | `engine.py`, `tricks/*` |
| `engine.py` | the loop | — |
## 2. Ground floor
| `errors.py` | errors | — |
"""
    order, allowed, ground = package_map(text, files)
    assert order == ["p.cli", "p.engine", "p.errors"] and ground == {"p.errors"}
    assert allowed == {"p.cli": {"p.engine", "p.tricks.a", "p.tricks.b"}, "p.engine": set(), "p.errors": set()}


def test_every_import_stays_inside_the_documented_layering():
    files = {str(p.relative_to(PACKAGE)): module_name(p) for p in PACKAGE.rglob("*.py")}
    order, allowed, ground = package_map(PACKAGE_MAP.read_text(), files)
    assert len(order) == len(set(order)), f"a file has two rows in {PACKAGE_MAP.name}"
    unmapped = sorted(set(files.values()) - set(order))
    assert not unmapped, f"{', '.join(unmapped)}: no row in docs/{PACKAGE_MAP.name}; add one (its job, what it may import)"
    below = {m: set(order[i + 1:]) for i, m in enumerate(order)}
    upward = sorted(f"{m} -> {t}" for m in order for t in allowed[m] - below[m])
    assert not upward, f"docs/{PACKAGE_MAP.name} lets a file import one above it: {', '.join(upward)}"
    stray = sorted(f"{m} -> {t}" for m, targets in import_graph().items() for t in targets
                   if t not in allowed[m] and not (t in ground and t in below[m]))
    assert not stray, (f"imports outside docs/{PACKAGE_MAP.name}: {', '.join(stray)}; name the file in the importer's "
                       "row if it is below it, else move the shared fact down a floor")
