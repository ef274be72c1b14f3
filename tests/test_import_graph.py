"""The package's module graph (benchmarks/import_graph.py): no cycle, and no a2d import hidden in a function."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"

#: Imports of a2d modules placed inside functions that stay, by importing module, each with its reason: none.
ALLOWED_IN_FUNCTIONS: dict[str, str] = {}


def _load_script():
    spec = importlib.util.spec_from_file_location("import_graph", REPO / "benchmarks" / "import_graph.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def graph():
    return _load_script()


def test_no_cycle_and_no_a2d_import_inside_a_function(graph, capsys):
    modules, imports = graph.read_imports(SRC)
    assert "a2d.config" in modules and "a2d.methods" in modules and len(imports) > 100
    edges = graph.graph(modules, imports)
    assert graph.cycles(edges) == []
    hidden = [f"{i.importer} -> {i.imported} (line {i.line})" for i in imports
              if i.in_function and i.importer not in ALLOWED_IN_FUNCTIONS]
    assert hidden == [], "move these imports to the module's top (a cycle they hide must be broken, not hidden)"
    assert graph.main([str(SRC)]) == 0
    out = capsys.readouterr().out
    assert "no cycle; " in out and " layers" in out


def test_config_knows_no_method(graph):
    """Each method owns its settings; the config below them reaches none of them, even through other modules."""
    modules, imports = graph.read_imports(SRC)
    edges = graph.graph(modules, imports)
    reached, todo = set(), ["a2d.config"]
    while todo:
        for target in edges[todo.pop()] - reached:
            reached.add(target)
            todo.append(target)
    assert not {m for m in reached if m.startswith("a2d.methods")}
    assert {"a2d.config", "a2d.methods"} <= edges["a2d.settings"]


def test_the_script_finds_cycles_and_imports_in_functions(graph, tmp_path, capsys):
    """The check can fail: a cycle through an import placed in a function, and a relative import, are found."""
    package = tmp_path / "a2d"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "low.py").write_text("def f():\n    from a2d.sub import high\n")
    (package / "sub" / "high.py").write_text("from ..low import f\nimport a2d.sub\n")
    modules, imports = graph.read_imports(tmp_path)
    assert {(i.importer, i.imported, i.in_function) for i in imports} == {
        ("a2d.low", "a2d.sub.high", True), ("a2d.low", "a2d.sub", True), ("a2d.sub.high", "a2d.low", False)}
    assert graph.cycles(graph.graph(modules, imports)) == [["a2d.low", "a2d.sub.high"]]
    assert graph.main([str(tmp_path)]) == 1
    assert "a2d.low <-> a2d.sub.high" in capsys.readouterr().out
    (package / "low.py").write_text("X = 1\n")
    assert graph.main([str(tmp_path)]) == 0
    assert "no cycle; 2 layers" in capsys.readouterr().out  # a2d.sub.high -> a2d.low
