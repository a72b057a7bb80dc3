"""The import graph of python/retro: cycles, imports that point up the layer order, long files.

Every ``import`` and ``from ... import`` counts, at module level, inside functions and under
``if TYPE_CHECKING:`` alike. An edge goes to the module named: ``from retro.db import Database``
-> retro.db (the package), ``from retro.index import flat`` -> retro.index.flat (a submodule).

    python scripts/import_graph.py [python/retro]

Prints the cycles (strongly connected components), the upward imports and the longest files;
exits 1 on a cycle or on a module that no layer holds.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "retro"
COMPILED = ("retro._core",)  # extension modules: no source to parse

# Bottom to top; a module belongs to the layer of its longest matching prefix. An import from a
# lower layer to a higher one is "upward".
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("base", ("retro._core", "retro._arrays", "retro._lazy", "retro.errors", "retro.files",
              "retro.machine", "retro.world")),
    ("ops", ("retro.ops",)),
    ("index", ("retro.index",)),
    ("data", ("retro.data",)),
    ("db", ("retro.db",)),
    ("model", ("retro.model",)),
    ("train", ("retro.train",)),
    ("generation", ("retro.generation",)),
    ("eval", ("retro.eval",)),
    ("demo", ("retro.demo",)),
    ("cli", ("retro.cli", "retro.__main__", "retro")),
)


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int


def module_files(root: Path) -> dict[str, Path]:
    """Dotted module name -> source file, for every .py file under root (the package directory)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _resolve(name: str, known: set[str]) -> str | None:
    """The longest prefix of name that is a module of the package, or None for another package."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in known:
            return prefix
    return None


def imports(module: str, path: Path, known: set[str]) -> list[Edge]:
    """The package-internal imports of one module (every statement, wherever it stands), one
    edge per imported module, at its first import's line."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    edges: dict[str, Edge] = {}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # a submodule when one is named, else the module the names come from
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                     for alias in node.names]
        else:
            continue
        for name in names:
            target = _resolve(name, known)
            if target is not None and target != module:
                edge = Edge(module, target, node.lineno)
                if target not in edges or edge.line < edges[target].line:
                    edges[target] = edge
    return list(edges.values())


def layer_of(module: str) -> int | None:
    """Index of the module's layer in LAYERS (longest prefix wins), or None."""
    best, best_len = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = i, len(prefix)
    return best


def cycles(nodes: set[str], edges: list[Edge]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    succ: dict[str, set[str]] = {n: set() for n in nodes}
    for e in edges:
        succ[e.source].add(e.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(succ[v]):
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

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return found


@dataclass
class Report:
    modules: dict[str, Path]
    edges: list[Edge]
    cycles: list[list[str]]
    upward: list[Edge]
    unplaced: list[str]
    lines: dict[Path, int]  # line count of every source file


def analyse(root: Path) -> Report:
    modules = module_files(root)
    known = set(modules) | set(COMPILED)
    edges = [e for m, p in modules.items() for e in imports(m, p, known)]
    placed = [e for e in edges if layer_of(e.source) is not None and layer_of(e.target) is not None]
    return Report(
        modules=modules,
        edges=edges,
        cycles=cycles(known, edges),
        upward=[e for e in placed if layer_of(e.source) < layer_of(e.target)],
        unplaced=sorted(m for m in known if layer_of(m) is None),
        lines={p: len(p.read_text(encoding="utf-8").splitlines()) for p in modules.values()},
    )


def main(argv: list[str]) -> int:
    root = Path(argv[0]) if argv else Path(__file__).resolve().parents[1] / "python" / PACKAGE
    report = analyse(root)
    print(f"{len(report.modules)} modules, {len(report.edges)} internal imports")
    print("layers, bottom to top: " + " < ".join(name for name, _ in LAYERS))
    for module in report.unplaced:
        print(f"no layer holds {module}: add it to LAYERS")
    print(f"cycles: {len(report.cycles)}")
    for component in report.cycles:
        print("  " + " <-> ".join(component))
    print(f"upward imports: {len(report.upward)}")
    for e in report.upward:
        print(f"  {e.source}:{e.line} -> {e.target}"
              f"  ({LAYERS[layer_of(e.source)][0]} -> {LAYERS[layer_of(e.target)][0]})")
    longest = sorted(report.lines.items(), key=lambda item: -item[1])[:3]
    print("longest files: " + ", ".join(f"{p.relative_to(root.parent)} ({n})" for p, n in longest))
    return 1 if report.cycles or report.unplaced else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
