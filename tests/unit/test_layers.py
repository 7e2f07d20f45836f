"""The three layers of `functions/crm` (README "Architecture") import downwards only: the platform
(`crm/*.py`) imports no capability and no tool, a capability (`crm/<topic>/`) no tool. What several
capabilities share (field rules, the SSRF-safe client) is platform, so no capability has to reach
into another for it. The graph is the import-time one of test_import_cycles.py."""

from __future__ import annotations

from tests.unit.test_import_cycles import FUNCTIONS, _package, import_graph

PLATFORM_FILES = {p.stem for p in (FUNCTIONS / "crm").glob("*.py")} - {"__init__"}


def layer(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "crm":
        return "function"
    if len(parts) == 1 or parts[1] in PLATFORM_FILES:
        return "platform"
    return "tools" if parts[1] == "tools" else "capability"


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    allowed = {"platform": {"platform"}, "capability": {"platform", "capability"},
               "tools": {"platform", "capability", "tools"}, "function": {"platform", "capability"}}
    return sorted(f"{source} -> {target}" for source, targets in graph.items() for target in targets
                  if layer(target) not in allowed[layer(source)])


def test_layers_import_downwards_only():
    graph = import_graph(FUNCTIONS)
    assert "crm.net" in graph and "crm.images.fetch" in graph, sorted(graph)
    assert layer("crm.net") == "platform" and layer("crm.images.fetch") == "capability"
    assert not upward_imports(graph), upward_imports(graph)


def test_the_shared_rules_are_platform():
    """The machine API and the booking intake share the customer block through crm.contacts."""
    graph = import_graph(FUNCTIONS)
    assert "crm.contacts" in graph["crm.wms.api"] and "crm.contacts" in graph["crm.booking.intake"]
    assert not {m for m in graph["crm.wms.api"] if m.startswith("crm.booking")}


def test_an_upward_import_is_found(tmp_path):
    root = _package(tmp_path, {
        "crm/__init__.py": "", "crm/net.py": "from crm.images import fetch\n",
        "crm/images/__init__.py": "", "crm/images/fetch.py": "import crm.net\n",
    })
    graph = import_graph(root)
    assert "crm.images.fetch" in graph["crm.net"]
    assert [e for e in upward_imports(graph) if e.startswith("crm.net ")] == ["crm.net -> crm.images.fetch"]
