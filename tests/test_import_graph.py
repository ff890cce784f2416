"""The package's imports run one way: no module of `birddet` imports (directly or through others) one that imports it.

Every import counts, also those inside functions: a lazy import hides a circle from Python's loader, not from the
reader, who then cannot tell which of two modules is the lower floor. The one exception is the package root's lazy
facade (`birddet/__init__.py` re-exports `load_backbone` / `load_detector` on first use), which sits above
everything by design.

Also here: no module grows past what a reader takes in one sitting.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "birddet"
#: Modules past this many lines should be split where a seam exists (docs/architecture.md).
MAX_MODULE_LINES = 500


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The birddet modules `name` imports anywhere in its body (`from pkg import sub` counts as `pkg.sub`)."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in known:
                    out.add(sub)
                elif base in known:
                    out.add(base)
    out.discard(name)
    return out


def _import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    graph = {name: _imports(name, path, known) for name, path in modules.items()}
    graph["birddet"] = set()  # the lazy facade (see the module docstring)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One path per strongly connected component of more than one module (Tarjan's algorithm), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
    return sorted(found)


def test_cycle_finder_sees_a_circle_through_a_function_level_import():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_import_reader_resolves_submodules_and_relative_imports(tmp_path):
    known = {"birddet.engine", "birddet.engine.trainer", "birddet.engine.detection", "birddet.errors"}
    src = tmp_path / "detection.py"
    src.write_text(
        "from birddet.engine import trainer\nfrom .trainer import Task\nfrom birddet.errors import InputError\n"
        "def f():\n    import birddet.engine.trainer\n"
    )
    assert _imports("birddet.engine.detection", src, known) == {"birddet.engine.trainer", "birddet.errors"}


def test_birddet_has_no_import_circle():
    cycles = _cycles(_import_graph())
    assert not cycles, "import circles (each group imports itself through the others): " + "; ".join(
        " <-> ".join(c) for c in cycles
    )


def test_no_module_is_too_long_to_read_in_one_sitting():
    long = {
        name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines, split them where a seam exists: {long}"
