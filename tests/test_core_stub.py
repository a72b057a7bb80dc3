"""python/retro/_core.pyi names what the compiled module holds: every public function, class,
method and property, no more (the CUDA build's names where this build has them)."""

import ast
from pathlib import Path

import retro
from retro import _core

STUB = Path(retro.__file__).with_name("_core.pyi")
CUDA_ONLY = "# ---- CUDA build only"


def stub_names(text: str) -> dict[str, set[str]]:
    """Top-level name -> its members (empty for functions and constants); "" holds the names."""
    names: dict[str, set[str]] = {"": set()}
    for node in ast.parse(text).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            name = node.name
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            name = node.target.id
        else:
            continue
        names[""].add(name)
        if isinstance(node, ast.ClassDef):
            names[name] = {m.name if isinstance(m, ast.FunctionDef) else m.target.id
                           for m in node.body if isinstance(m, (ast.FunctionDef, ast.AnnAssign))}
    return names


def module_names() -> dict[str, set[str]]:
    names: dict[str, set[str]] = {"": set()}
    for name in dir(_core):
        if name.startswith("__") and name != "__version__":
            continue
        names[""].add(name)
        if isinstance(getattr(_core, name), type):
            names[name] = {m for m in vars(getattr(_core, name))
                           if not m.startswith("_") or m == "__init__"}
    return names


def test_stub_matches_the_module():
    text = STUB.read_text()
    assert CUDA_ONLY in text
    expected = stub_names(text if _core.has_cuda() else text.split(CUDA_ONLY)[0])
    assert module_names() == expected


def test_py_typed_is_shipped():
    assert Path(retro.__file__).with_name("py.typed").is_file()
