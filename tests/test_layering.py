"""The house rules of the code's shape, checked on the source: no import
cycles among bot4's modules and its bundled plugins'.

Only imports that run when a module is imported count: those at a module's
top level, outside ``if TYPE_CHECKING:`` (annotations only) and outside
functions (a deferred import is deliberate, and says why where it is).
``from pkg import submodule`` is an edge to the submodule alone: the package
is the submodule's parent, initialised before it whatever the importer does.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _modules() -> dict[str, Path]:
    roots = [ROOT / "bot4", *(p for p in ROOT.glob("plugins/*/*/src/*") if p.is_dir())]
    found: dict[str, Path] = {}
    for root in roots:
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root.parent).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _top_level_imports(name: str, path: Path, known: set[str]) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        for item in ast.walk(node):
            if isinstance(item, ast.Import):
                out.update(alias.name for alias in item.names)
            elif isinstance(item, ast.ImportFrom):
                module = item.module or ""
                if item.level:
                    base = package.split(".")[: len(package.split(".")) - (item.level - 1)]
                    module = ".".join([*base, module] if module else base)
                submodules = {f"{module}.{alias.name}" for alias in item.names} & known
                out |= submodules
                if len(submodules) != len(item.names):
                    out.add(module)
    return {m for m in out if m in known and m != name}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_one_that_imports_it_back() -> None:
    modules = _modules()
    known = set(modules)
    graph = {name: _top_level_imports(name, path, known) for name, path in modules.items()}
    assert len(modules) > 100  # the walk found the code (bot4 and the plugins)
    assert "bot4.kernel_loop" in graph["bot4.kernel"]  # and reads its imports
    assert _cycles(graph) == []


def test_the_checker_finds_a_cycle() -> None:
    # The checker itself: a two-module cycle through a TYPE_CHECKING-free
    # import is found, a one-way import is not.
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_only_imports_made_at_import_time_count(tmp_path: Path) -> None:
    source = tmp_path / "mod.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "import pkg.a\n"
        "from pkg import b\n"
        "from . import c\n"
        "try:\n    from pkg.d import name\nexcept ImportError:\n    pass\n"
        "if TYPE_CHECKING:\n    from pkg.e import T\n"
        "def later():\n    import pkg.f\n",
        encoding="utf-8",
    )
    known = {"pkg", "pkg.a", "pkg.b", "pkg.c", "pkg.d", "pkg.e", "pkg.f", "pkg.mod"}
    assert _top_level_imports("pkg.mod", source, known) == {"pkg.a", "pkg.b", "pkg.c", "pkg.d"}
