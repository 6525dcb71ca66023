"""The import graph of the ``mmpipeline`` package has no cycles.

Built with the standard library's :mod:`ast` from the source files (nothing is imported): every
``import`` / ``from ... import`` of an ``mmpipeline`` module is an edge, whether it sits at module
level or inside a function or method (a function-local import still makes the importing module
depend on the imported one at run time; hiding an edge in a function does not remove the cycle).
Imports under ``if TYPE_CHECKING:`` are left out: they never run.

``from pkg import name`` is an edge to ``pkg.name`` when that is a module of the package, else to
``pkg``; importing ``a.b.c`` is an edge to ``a.b.c`` only (not to the parent packages it implies).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "mmpipeline"

# Known cycles outside mmpipeline/embed, allowed until their owners break them (issue 10): name ->
# the modules of the cycle (its strongly connected component). Any other cycle -- or a known one
# that grows by a module -- fails the test. When this test was written the only cycle in the package
# was embed's (encoders -> tower -> models -> encoders), fixed by the embed split, so the list is empty.
KNOWN_CYCLES: dict[str, frozenset[str]] = {}

# The tower's training code is a stage of its own: nothing on the inference side may import it,
# not even inside a function (the embed stage must never start training).
TRAINING_ONLY = "mmpipeline.embed.tower.train"
INFERENCE_SIDE = ("mmpipeline.embed.job", "mmpipeline.embed.models", "mmpipeline.embed.encoders",
                  "mmpipeline.embed.registry", "mmpipeline.embed.tower.model", "mmpipeline.embed.tower")


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((ROOT / PACKAGE).rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Every Import/ImportFrom node, at any depth, except those under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                stack.extend(child.orelse)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child
            stack.append(child)


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                if node.level:  # relative: resolve against this module's package
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[:len(base) - (node.level - 1)]
                    src = ".".join(base + ([node.module] if node.module else []))
                else:
                    src = node.module or ""
                targets = [f"{src}.{a.name}" if f"{src}.{a.name}" in mods else src for a in node.names]
            for t in targets:
                while t and t not in mods and "." in t:  # `import a.b.attr` style: nearest module
                    t = t.rsplit(".", 1)[0]
                if t in mods and t != mod:
                    graph[mod].add(t)
                # importing a.b.c also runs the package a.b's __init__ (unless this module is inside it)
                parent = t.rsplit(".", 1)[0] if "." in t else ""
                if parent in mods and parent != mod and not mod.startswith(parent + "."):
                    graph[mod].add(parent)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[tuple[frozenset[str], list[str]]]:
    """Per strongly connected component with more than one module (Tarjan): its modules and one
    cycle through them as a closed path, so a failure names a concrete chain of imports to break."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    sccs: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    cycles = []
    for comp in sccs:
        members = set(comp)
        start = comp[0]
        # shortest path start -> ... -> start inside the component (BFS)
        prev: dict[str, str] = {}
        frontier = [start]
        seen = {start}
        found = None
        while frontier and found is None:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v] & members):
                    if w == start:
                        found = v
                        break
                    if w not in seen:
                        seen.add(w)
                        prev[w] = v
                        nxt.append(w)
                if found is not None:
                    break
            frontier = nxt
        path = [found]
        while path[-1] != start:
            path.append(prev[path[-1]])
        cycles.append((members, list(reversed(path)) + [start]))
    return cycles


def reachable(graph: dict[str, set[str]], start: str) -> dict[str, str]:
    """Modules imported, directly or not, by ``start``: module -> the module that imports it."""
    seen: dict[str, str] = {}
    todo = [start]
    while todo:
        v = todo.pop()
        for w in graph.get(v, ()):
            if w not in seen and w != start:
                seen[w] = v
                todo.append(w)
    return seen


def test_graph_sees_function_local_imports(tmp_path):
    """The walker counts an import inside a function body and skips TYPE_CHECKING blocks."""
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import x.typed\n"
                     "def f():\n    import x.local\n    from x import y\n")
    names = sorted((n.module if isinstance(n, ast.ImportFrom) else n.names[0].name) for n in _imports(tree))
    assert names == ["typing", "x", "x.local"]


def test_cycle_finder_reports_a_closed_path():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(g) == [(frozenset("abc"), ["a", "b", "c", "a"])]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_graph_resolves_the_embed_package():
    """Sanity check of the walker on the real tree: known edges (module-level and function-local)."""
    g = import_graph()
    assert "mmpipeline.embed.encoders" in g["mmpipeline.embed.job"]  # module level
    assert "mmpipeline.embed.tower.model" in g["mmpipeline.embed.encoders"]  # inside TowerImage.__init__
    assert "mmpipeline.embed.data" in g["mmpipeline.embed.job"]  # `from mmpipeline.embed import data`


def test_no_import_cycles_in_mmpipeline():
    cycles = find_cycles(import_graph())
    known = set(KNOWN_CYCLES.values())
    new = [path for members, path in cycles if members not in known]
    assert not new, "import cycles in mmpipeline/ (break one edge of each):\n" + "\n".join(
        "  " + " -> ".join(c) for c in new)


@pytest.mark.parametrize("module", INFERENCE_SIDE)
def test_inference_never_imports_tower_training(module):
    seen = reachable(import_graph(), module)
    if TRAINING_ONLY in seen:
        chain = [TRAINING_ONLY]
        while chain[-1] != module:
            chain.append(seen[chain[-1]])
        raise AssertionError(f"{module} imports the tower's training code: " + " -> ".join(reversed(chain)))


def test_orchestration_sits_on_top_and_the_registry_at_the_bottom():
    """Only the orchestration package imports itself (stages never reach back into Airflow wiring),
    and the stage registry imports no other mmpipeline module (the DAG files load it at parse time)."""
    g = import_graph()
    users = sorted(m for m, deps in g.items() if not m.startswith("mmpipeline.orchestration")
                   and any(d.startswith("mmpipeline.orchestration") for d in deps))
    assert users == [], f"modules outside mmpipeline.orchestration import it: {users}"
    assert g["mmpipeline.stages"] <= {"mmpipeline"}, g["mmpipeline.stages"]
