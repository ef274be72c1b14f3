"""The a2d package's module graph, read from its source (stdlib ``ast``; nothing is imported).

    python benchmarks/import_graph.py [SRC]          # SRC: the folder holding a2d/ (default: src/ of this checkout)
    python benchmarks/import_graph.py --edges        # also every edge, "importer -> imported"

Every ``import a2d...`` / ``from a2d... import ...`` counts, those at module top and those inside functions (an
import placed in a function still ties the two modules; it only hides the tie from a top-level reading). It
prints the number of modules and edges, the imports placed inside functions, each cycle (a strongly connected
component of more than one module, or a module that imports itself), and the number of layers: the longest
chain of imports, counted in modules, and one such chain, when there is no cycle. Exit status 1 on a cycle.

``from a2d.methods import kd`` names the submodule ``a2d.methods.kd`` when that file exists, else the package
``a2d.methods``; importing ``a2d.x.y`` also runs ``a2d.x``'s ``__init__``, an edge to the package too.
"""
from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "a2d"
DEFAULT_SRC = Path(__file__).resolve().parents[1] / "src"


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name
    imported: str
    line: int
    in_function: bool  # placed inside a function or method body (not at module or class level)


def module_names(src: Path) -> dict[str, Path]:
    """``{dotted name: file}`` of every module of the package under ``src``."""
    names = {}
    for path in sorted((src / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _resolve(name: str, modules: dict[str, Path]) -> list[str]:
    """The package's modules that importing ``name`` runs: it (or its closest existing parent) and its packages."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    out = []
    while name.startswith(PACKAGE) and name:
        if name in modules:
            out.append(name)
        name = name.rpartition(".")[0]
    return out


def _targets(node: ast.AST, module: str, is_package: bool, modules: dict[str, Path]) -> list[str]:
    if isinstance(node, ast.Import):
        return [m for alias in node.names for m in _resolve(alias.name, modules)]
    if node.level:  # relative: from . import x / from ..y import z
        base = module if is_package else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            base = base.rpartition(".")[0]
        name = f"{base}.{node.module}" if node.module else base
    else:
        name = node.module or ""
    if name != PACKAGE and not name.startswith(PACKAGE + "."):
        return []
    found = []
    for alias in node.names:  # `from a2d.methods import kd`: the submodule when there is one
        sub = f"{name}.{alias.name}"
        found += _resolve(sub, modules) if sub in modules else _resolve(name, modules)
    return found


def read_imports(src: Path) -> tuple[dict[str, Path], list[Import]]:
    """The package's modules and every import of one of them by another (self-imports of a package's own
    ``__init__`` through its submodules excluded)."""
    modules = module_names(src)
    imports = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"

        def visit(node: ast.AST, in_function: bool) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    for target in dict.fromkeys(_targets(child, module, is_package, modules)):
                        if target != module and not module.startswith(target + "."):
                            imports.append(Import(module, target, child.lineno, in_function))
                inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                visit(child, inner)

        visit(tree, False)
    return modules, imports


def graph(modules, imports) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for imp in imports:
        edges[imp.importer].add(imp.imported)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module, or with a self-edge (Tarjan, iterative)."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in edges[node]:
                    out.append(sorted(component))
    return out


def layers(edges: dict[str, set[str]]) -> dict[str, int]:
    """Each module's layer in an acyclic graph: 1 for a module that imports none of the package, else one more
    than the highest layer it imports."""
    depth: dict[str, int] = {}

    def of(module: str) -> int:
        if module not in depth:
            depth[module] = 1 + max((of(m) for m in edges[module]), default=0)
        return depth[module]

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(edges) + 100))
    for module in edges:
        of(module)
    return depth


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", nargs="?", type=Path, default=DEFAULT_SRC, help="the folder holding a2d/")
    parser.add_argument("--edges", action="store_true", help="print every edge")
    args = parser.parse_args(argv)
    if not (args.src / PACKAGE / "__init__.py").is_file():
        print(f"import_graph: {args.src}: no {PACKAGE}/__init__.py there", file=sys.stderr)
        return 2
    modules, imports = read_imports(args.src)
    edges = graph(modules, imports)
    print(f"{len(modules)} modules, {sum(map(len, edges.values()))} edges")
    if args.edges:
        for module in sorted(edges):
            for target in sorted(edges[module]):
                print(f"  {module} -> {target}")
    inside = [i for i in imports if i.in_function]
    print(f"{len(inside)} import(s) of a2d modules inside functions" + (":" if inside else ""))
    for i in inside:
        print(f"  {modules[i.importer].relative_to(args.src)}:{i.line}: {i.importer} -> {i.imported}")
    found = cycles(edges)
    if found:
        print(f"{len(found)} cycle(s):")
        for component in found:
            print(f"  {' <-> '.join(component)} ({len(component)} modules)")
        return 1
    depth = layers(edges)
    print(f"no cycle; {max(depth.values(), default=0)} layers")
    chain = [max(depth, key=lambda m: (depth[m], m))] if depth else []
    while chain and edges[chain[-1]]:  # down the highest layer each step: one longest chain
        chain.append(max(edges[chain[-1]], key=lambda m: (depth[m], m)))
    print(f"a longest chain: {' -> '.join(chain)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
