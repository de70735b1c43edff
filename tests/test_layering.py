"""The package's modules form layers: no import, at module level or inside a function, runs back up."""

import ast
import subprocess
import sys
from pathlib import Path

import autoselmatch

PACKAGE = Path(autoselmatch.__file__).parent


def module_name(path: Path) -> str:
    parts = ("autoselmatch",) + path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if p.name != "__main__.py"}


def imported_modules(name: str, source: str) -> set[str]:
    """Modules of the package that ``source`` (module ``name``) imports anywhere but under ``if TYPE_CHECKING``."""
    is_package = MODULES[name].name == "__init__.py"
    found = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")[: len(name.split(".")) + is_package - node.level]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # ``from . import _stage`` imports a module; ``from ..export import load_result`` a name of a module
            targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in MODULES else module
                       for alias in node.names]
        else:
            for child in ast.iter_child_nodes(node):
                visit(child)
            return
        for target in targets:
            while target and target not in MODULES:  # a name inside a module: the module itself
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)

    visit(ast.parse(source))
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return found


def test_the_import_graph_has_no_cycle():
    graph = {name: imported_modules(name, path.read_text()) for name, path in MODULES.items()}
    # A package's __init__ imports its private modules; a private module importing its own package's
    # __init__ back would be a cycle too, and is reported like any other.
    assert cycles(graph) == []


def test_the_graph_sees_lazy_imports_and_finds_cycles():
    lazy = "import os\n\ndef f():\n    from .tune import tune\n"
    assert imported_modules("autoselmatch.config", lazy) == {"autoselmatch.tune"}
    guarded = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .tune import tune\n"
    assert imported_modules("autoselmatch.config", guarded) == set()
    relative = "from ..export import load_result\nfrom . import _controller\nimport autoselmatch.data as data\n"
    assert imported_modules("autoselmatch.tune._objectives", relative) == {
        "autoselmatch.export", "autoselmatch.tune._controller", "autoselmatch.data"}
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_every_module_imports_first_in_a_fresh_package():
    """Each module imported before any other of the package: an import-time cycle fails here whatever the order."""
    code = (
        "import importlib, sys\n"
        f"names = {sorted(MODULES)!r}\n"
        "failed = []\n"
        "for name in names:\n"
        "    for loaded in [m for m in sys.modules if m == 'autoselmatch' or m.startswith('autoselmatch.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as exc:\n"
        "        failed.append(f'{name}: {exc!r}')\n"
        "print('\\n'.join(failed))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
