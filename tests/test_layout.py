"""The package's layers, checked from the tree itself.

Subpackages are stacked engine < config < observe < http < runtime < tools. A module may
import the standard library, its own layer, the layers below it and the third-party
packages its layer and the ones below are allowed. The engine (and ``http/wire``, the pure
HTTP rules) may use only the standard library's pure modules (an allow-list) and may not call
``open``, ``print`` or ``__import__``. Nothing imports ``tools`` except the entry points.
Imports under ``if TYPE_CHECKING:`` never run and are left out; an import inside a function
runs and counts. Which of our modules are pure follows from where they live: there is no
list of them to keep up to date.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "corsproxy"
LAYERS = ("engine", "config", "observe", "http", "runtime", "tools")
THIRD_PARTY = {  # what each layer adds to those below it
    "engine": set(),
    "config": {"yaml"},
    "observe": {"prometheus_client"},
    "http": {"httptools"},
    "runtime": {"uvloop"},
    "tools": {"aiohttp", "yarl"},
}
# The standard library pure code may use: data structures, text and numbers, nothing that
# touches files, sockets, processes, clocks or the event loop. An allow-list, so a new
# module is refused until someone decides it is pure.
PURE_STDLIB = {
    "abc",
    "bisect",
    "collections",
    "collections.abc",
    "dataclasses",
    "enum",
    "functools",
    "heapq",
    "ipaddress",
    "itertools",
    "json",
    "math",
    "operator",
    "re",
    "string",
    "types",
    "typing",
    "unicodedata",
    "urllib.parse",
}
# Builtins that reach outside the process or around the import rules.
IMPURE_CALLS = {"open", "input", "print", "__import__", "exec", "eval", "compile", "breakpoint"}
PURE_OUTSIDE_ENGINE = {"corsproxy.http.wire"}
ENTRY_POINTS = {"corsproxy.__main__", "corsproxy.echo"}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, dotted
    target: str  # what it imports, dotted
    line: int


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def type_checking_only(node: ast.AST) -> bool:
    """``if TYPE_CHECKING:`` or ``if typing.TYPE_CHECKING:`` exactly (never ``if not ...``)."""
    return isinstance(node, ast.If) and ast.unparse(node.test) in (
        "TYPE_CHECKING",
        "typing.TYPE_CHECKING",
    )


def imports_of(tree: ast.AST, module: str, is_package: bool) -> Iterator[Import]:
    """Every import that runs, with ``from . import x`` resolved to dotted names."""
    stack = [tree]
    while stack:
        node = stack.pop()
        for child in ast.iter_child_nodes(node):
            if type_checking_only(child):
                stack.extend(child.orelse)
                continue
            stack.append(child)
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield Import(module, alias.name, child.lineno)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parent = module.split(".")
                    parent = parent[: len(parent) - child.level + (1 if is_package else 0)]
                    base = ".".join(parent + ([base] if base else []))
                for alias in child.names:
                    # ``from corsproxy.engine import cors`` imports the module corsproxy.engine.cors
                    yield Import(
                        module, f"{base}.{alias.name}" if base else alias.name, child.lineno
                    )


def layer_of(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "corsproxy" and parts[1] in LAYERS else None


def violations(root: Path) -> list[str]:
    """Every import in the package under ``root`` that breaks the layering, as text."""
    found = []
    for path in sorted(root.rglob("*.py")):
        module = module_name(path, root)
        tree = ast.parse(path.read_text(), str(path))
        layer = layer_of(module)
        for imp in imports_of(tree, module, path.name == "__init__.py"):
            top = imp.target.split(".")[0]
            where = f"{path.relative_to(root.parent)}:{imp.line}: {module} imports {imp.target}"
            if top == "corsproxy":
                target_layer = layer_of(imp.target)
                if module in ENTRY_POINTS:
                    continue
                if target_layer == "tools" and layer != "tools":
                    found.append(f"{where}: nothing imports tools/")
                elif target_layer is None:
                    if imp.target not in ("corsproxy.__version__", "corsproxy"):
                        found.append(f"{where}: the package root holds only the version")
                elif layer is None:
                    found.append(f"{where}: only entry points live beside the layers")
                elif LAYERS.index(target_layer) > LAYERS.index(layer):
                    found.append(f"{where}: {layer}/ may not import {target_layer}/ above it")
                continue
            if top == "__future__":
                continue
            if top in sys.stdlib_module_names:
                if pure(module) and not pure_stdlib(imp.target):
                    found.append(f"{where}: pure code does no I/O")
                continue
            allowed = (
                set().union(*(THIRD_PARTY[name] for name in LAYERS[: LAYERS.index(layer) + 1]))
                if layer
                else set()
            )
            if top not in allowed:
                found.append(f"{where}: {top} is not for {layer or 'the package root'}")
        if pure(module):
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Name)
                    and node.func.id in IMPURE_CALLS
                ):
                    place = f"{path.relative_to(root.parent)}:{node.lineno}: {module} calls"
                    found.append(f"{place} {node.func.id}(): pure code does no I/O")
    return found


def pure(module: str) -> bool:
    return layer_of(module) == "engine" or module in PURE_OUTSIDE_ENGINE


def pure_stdlib(target: str) -> bool:
    """``target`` (a module, or a name imported from one) lies in PURE_STDLIB."""
    parts = target.split(".")
    return any(".".join(parts[:n]) in PURE_STDLIB for n in range(1, len(parts) + 1))


def cycles(root: Path) -> list[list[str]]:
    """Module-level import cycles inside the package (lazy imports included)."""
    graph: dict[str, set[str]] = {}
    names = {module_name(p, root) for p in root.rglob("*.py")}
    for path in root.rglob("*.py"):
        module = module_name(path, root)
        tree = ast.parse(path.read_text())
        graph[module] = set()
        for imp in imports_of(tree, module, path.name == "__init__.py"):
            target = imp.target if imp.target in names else imp.target.rpartition(".")[0]
            if target in names and target != module and not target.endswith(("corsproxy",)):
                graph[module].add(target)
    found, state = [], {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append([*trail[trail.index(nxt) :], nxt] if nxt in trail else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_every_import_runs_down_the_layers() -> None:
    assert violations(PACKAGE) == []


def test_no_import_goes_round_in_a_circle() -> None:
    assert cycles(PACKAGE) == []


def test_every_layer_is_a_subpackage_that_says_what_it_may_import() -> None:
    for layer in LAYERS:
        doc = ast.get_docstring(ast.parse((PACKAGE / layer / "__init__.py").read_text()))
        assert doc and "May import" in doc, layer
    loose = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__", "echo"}
    assert loose == set(), "modules belong in a layer"


@pytest.mark.parametrize(
    ("module", "source", "broken_rule"),
    [
        ("engine/cors.py", "import asyncio\n", "pure code does no I/O"),
        ("engine/cors.py", "from corsproxy.http import proxy\n", "may not import http/"),
        ("engine/cors.py", "import yaml\n", "yaml is not for engine"),
        ("config/load.py", "import aiohttp\n", "aiohttp is not for config"),
        ("http/wire.py", "import socket\n", "pure code does no I/O"),
        (
            "http/proxy.py",
            "def f():\n    from corsproxy.runtime import app\n",
            "may not import runtime/",
        ),
        ("runtime/app.py", "from corsproxy.tools import cli\n", "nothing imports tools/"),
        ("observe/live.py", "from ..http import listener\n", "may not import http/"),
        ("engine/cors.py", "if not TYPE_CHECKING:\n    import asyncio\n", "pure code does no I/O"),
        ("engine/cors.py", "import urllib.request\n", "pure code does no I/O"),
        ("engine/cors.py", "import importlib\n", "pure code does no I/O"),
        ("engine/paths.py", "def f():\n    return open('x').read()\n", "calls open()"),
        ("http/wire.py", "def f():\n    __import__('socket')\n", "calls __import__()"),
    ],
)
def test_the_rule_catches_a_module_that_breaks_it(
    tmp_path: Path, module: str, source: str, broken_rule: str
) -> None:
    """The checker run on a copy of the package with one bad import added."""
    copy = tmp_path / "corsproxy"
    for path in PACKAGE.rglob("*.py"):
        target = copy / path.relative_to(PACKAGE)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text())
    # No check of the clean copy first (test_every_import_runs_down_the_layers checks the same
    # files): exactly one violation below can only be the added line's.
    bad = copy / module
    bad.write_text(bad.read_text() + "\n" + source)
    found = violations(copy)
    assert len(found) == 1 and broken_rule in found[0], found


def test_a_type_checking_import_is_not_a_dependency(tmp_path: Path) -> None:
    package = tmp_path / "corsproxy"
    (package / "engine").mkdir(parents=True)
    (package / "engine" / "policy.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import asyncio\n"
    )
    assert violations(package) == []
