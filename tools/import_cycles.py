"""Fail on any import cycle between dkit's modules, function-level imports included (`make layers`).

import-linter's layer contracts only see imports that cross layers; two modules of one layer importing each other
(at module level or inside a function, where Python lets a cycle work) go unseen. This builds the same import graph
(grimp, import-linter's own graph library: every `import` statement in a module, wherever it stands) and reports
each strongly connected component of more than one module, with one cycle through it.

    python tools/import_cycles.py            # run from a folder where `import dkit` finds the installed shape
"""

from __future__ import annotations

import sys

import grimp


def components(graph: grimp.ImportGraph, modules: set[str]) -> list[list[str]]:
    """Tarjan's strongly connected components of `modules` (iterative), the ones of two or more modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root) & modules)))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child) & modules))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.append(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def cycle_in(graph: grimp.ImportGraph, comp: list[str]) -> list[str]:
    """One cycle through the component's first module: a shortest path back to it."""
    start = comp[0]
    members = set(comp)
    for nxt in sorted(graph.find_modules_directly_imported_by(start) & members):
        path = graph.find_shortest_chain(importer=nxt, imported=start)
        if path:
            return [start, *path]
    return comp


def line_of(graph: grimp.ImportGraph, importer: str, imported: str) -> str:
    """Where `importer` imports `imported` (file line numbers)."""
    details = graph.get_import_details(importer=importer, imported=imported)
    return ", ".join(f"line {d['line_number']}" for d in details) or "?"


def main(package: str = "dkit") -> int:
    """Print every cycle in `package`; exit status 1 when there is one."""
    graph = grimp.build_graph(package, cache_dir=None)
    modules = {m for m in graph.modules if m == package or m.startswith(package + ".")}
    comps = components(graph, modules)
    for comp in comps:
        cycle = cycle_in(graph, comp)
        sys.stdout.write(f"import cycle ({len(comp)} modules): " + " -> ".join(cycle) + "\n")
        for a, b in zip(cycle, cycle[1:], strict=False):
            sys.stdout.write(f"    {a} imports {b} ({line_of(graph, a, b)})" + "\n")
    sys.stdout.write(f"import cycles in {package}: {len(comps)} ({len(modules)} modules, function-level imports "
                     "included)\n")
    return 1 if comps else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
