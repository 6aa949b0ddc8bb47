"""No module of gluon_tricks/ over 450 lines and no function over 60 (issue 24): a newcomer
reads a file in one sitting and a function on one screen. The argument parser is the one
exception: it is a flat list of options, read one at a time.

Sizes are read from the source with `ast` (a function runs from its `def` line to its last
line, nested functions included), so the test needs no import of the package's modules.
"""
from __future__ import annotations

import ast
from pathlib import Path

import gluon_tricks

PACKAGE = Path(gluon_tricks.__file__).resolve().parent
MODULE_LINES = 450
FUNCTION_LINES = 60
# (file inside the package, function name): allowed to be longer, with the reason above.
LONG_FUNCTIONS_ALLOWED = {("cli.py", "build_parser")}


def long_functions(source: str, limit: int) -> list[tuple[str, int]]:
    """(name, lines) of every function or method in `source` longer than `limit` lines."""
    return [(n.name, n.end_lineno - n.lineno + 1) for n in ast.walk(ast.parse(source))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > limit]


def test_long_functions_on_known_source():
    source = ("def five_lines():\n    a = 1\n    b = 2\n    c = 3\n    return a + b + c\n\n\n"
              "class C:\n    @property\n    def six_lines(self):\n        a = 1\n\n        b = 2\n"
              "        c = 3\n        return a + b + c\n")
    # five_lines: its def and 4 statements; six_lines: its def, 4 statements and a blank line,
    # the decorator not counted
    assert long_functions(source, 5) == [("six_lines", 6)]
    assert long_functions(source, 4) == [("five_lines", 5), ("six_lines", 6)]
    assert long_functions(source, 6) == []


def test_no_module_over_450_lines():
    long = sorted(f"{p.relative_to(PACKAGE)} ({n} lines)" for p in PACKAGE.rglob("*.py")
                  if (n := len(p.read_text().splitlines())) > MODULE_LINES)
    assert not long, (f"over {MODULE_LINES} lines: {', '.join(long)}; split the module by job (docs/package-map.md "
                      "gives each file one) and add the new file's row there")


def test_no_function_over_60_lines_but_the_argument_parser():
    long = sorted(f"{p.relative_to(PACKAGE)}: {name} ({n} lines)" for p in PACKAGE.rglob("*.py")
                  for name, n in long_functions(p.read_text(), FUNCTION_LINES)
                  if (str(p.relative_to(PACKAGE)), name) not in LONG_FUNCTIONS_ALLOWED)
    assert not long, (f"over {FUNCTION_LINES} lines: {', '.join(long)}; give its parts names of their own "
                      "(small functions, or a class where it keeps state)")
