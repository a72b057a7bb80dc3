"""The package's shape (docs/ARCHITECTURE.md), measured by scripts/import_graph.py: no import cycle
(counting imports inside functions), imports point down the layer order, no long modules."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "python" / "retro"
MAX_LINES = 600
MAX_UPWARD = 2


def load_script():
    """scripts/import_graph.py as a module (registered first: its dataclasses look it up)."""
    if "import_graph" not in sys.modules:
        path = ROOT / "scripts" / "import_graph.py"
        spec = importlib.util.spec_from_file_location("import_graph", path)
        sys.modules["import_graph"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["import_graph"])
    return sys.modules["import_graph"]


@pytest.fixture(scope="module")
def report():
    return load_script().analyse(PACKAGE)


def test_the_script_runs_and_exits_0():
    assert load_script().main([str(PACKAGE)]) == 0


def test_every_module_has_a_layer(report):
    assert report.unplaced == []


def test_no_import_cycle(report):
    assert report.cycles == []  # observed: [] (before the index subpackage: one of 4 modules)


def test_few_upward_imports(report):
    upward = [f"{e.source}:{e.line} -> {e.target}" for e in report.upward]
    assert len(upward) <= MAX_UPWARD, upward  # observed: 0


def test_no_long_module(report):
    long = {str(p.relative_to(PACKAGE)): n for p, n in report.lines.items() if n > MAX_LINES}
    assert long == {}  # observed: the longest is model/gpt.py (315) ... db/stages.py (427)


def test_the_script_finds_a_cycle_inside_functions_and_an_upward_import(tmp_path):
    """The measure itself: a lazy import still closes a cycle; db -> model is upward."""
    package = tmp_path / "retro"
    (package / "db").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "db" / "__init__.py").write_text("")
    (package / "db" / "a.py").write_text("from retro.db import b\n")
    (package / "db" / "b.py").write_text("def f():\n    from retro.db.a import g\n")
    (package / "model.py").write_text("")
    (package / "db" / "c.py").write_text("import retro.model\n")
    script = load_script()
    found = script.analyse(package)
    assert found.cycles == [["retro.db.a", "retro.db.b"]]
    assert [(e.source, e.target) for e in found.upward] == [("retro.db.c", "retro.model")]
    assert script.main([str(package)]) == 1
