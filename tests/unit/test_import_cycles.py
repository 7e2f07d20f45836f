"""No import cycle among the modules of `functions/` (issue 11): capabilities, platform and tools
import each other in one direction only.

The graph is read with `ast` (nothing is imported): an edge for each `crm.*` import that runs when
the module is imported — at module level and in class bodies, not inside functions (a lazy import
runs later) nor under `if TYPE_CHECKING:`. `from crm.x import y` names the module `crm.x.y` when
that is a module, else `crm.x`.
"""

from __future__ import annotations

import ast
from pathlib import Path

from crm import ROOT

FUNCTIONS = ROOT / "functions"


def module_names(root: Path) -> dict[str, Path]:
    """Every module under `root` by dotted name (`crm/booking/intake.py` → `crm.booking.intake`)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).with_suffix("")
        if any(part.startswith(".") or part.endswith(".egg-info") for part in rel.parts):
            continue
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        if parts:
            modules[".".join(parts)] = path
    return modules


def _import_time_nodes(body: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.If):
            test = node.test
            if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
                    isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
                found += _import_time_nodes(node.orelse)
            else:
                found += _import_time_nodes(node.body) + _import_time_nodes(node.orelse)
        elif isinstance(node, ast.Try):
            found += _import_time_nodes(node.body)
            for handler in node.handlers:
                found += _import_time_nodes(handler.body)
            found += _import_time_nodes(node.orelse) + _import_time_nodes(node.finalbody)
        elif isinstance(node, ast.With | ast.ClassDef):
            found += _import_time_nodes(node.body)
    return found


def import_graph(root: Path, prefix: str = "crm") -> dict[str, set[str]]:
    """module -> the `prefix.*` modules it imports at import time."""
    modules = module_names(root)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in _import_time_nodes(ast.parse(path.read_text(encoding="utf-8"), str(path)).body):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
                continue
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.add(sub if sub in modules else base)
        graph[name] = {t for t in targets if (t == prefix or t.startswith(prefix + ".")) and t in modules}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module, or a module importing itself
    (Tarjan), each sorted; [] when the graph has no cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def test_functions_have_no_import_cycle():
    graph = import_graph(FUNCTIONS)
    assert "crm.tools.cli" in graph and "crm.booking.intake" in graph, sorted(graph)
    assert "crm.db" in graph["crm.booking.intake"], "the graph misses plain imports"
    found = cycles(graph)
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_a_planted_cycle_is_found(tmp_path):
    root = _package(tmp_path, {
        "crm/__init__.py": "",
        "crm/a.py": "from crm import b\n",
        "crm/sub/__init__.py": "",
        "crm/sub/b.py": "",
        "crm/b.py": "import crm.sub.c\n",
        "crm/sub/c.py": "from .. import a\n",  # relative: crm.a
        "crm/d.py": "from crm.a import x\n",  # a name in crm.a, not a module: the edge goes to crm.a
        "main.py": "from crm import d\n",
    })
    graph = import_graph(root)
    assert graph["crm.d"] == {"crm.a"} and graph["main"] == {"crm.d"}
    assert cycles(graph) == [["crm.a", "crm.b", "crm.sub.c"]]


def test_a_self_import_is_a_cycle(tmp_path):
    root = _package(tmp_path, {"crm/__init__.py": "", "crm/a.py": "import crm.a\n"})
    assert cycles(import_graph(root)) == [["crm.a"]]


def test_imports_that_do_not_run_at_import_time_are_no_edges(tmp_path):
    root = _package(tmp_path, {
        "crm/__init__.py": "",
        "crm/a.py": "from crm import b\n",
        "crm/b.py": ("from typing import TYPE_CHECKING\n"
                     "if TYPE_CHECKING:\n    from crm import a\n"
                     "def later():\n    from crm import a\n"
                     "try:\n    import crm.c\nexcept ImportError:\n    pass\n"),
        "crm/c.py": "class C:\n    from crm import a\n",  # a class body runs at import time
    })
    graph = import_graph(root)
    assert graph["crm.b"] == {"crm.c"} and graph["crm.c"] == {"crm.a"}
    assert cycles(graph) == [["crm.a", "crm.b", "crm.c"]]
